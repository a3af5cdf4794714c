"""gptqmodel's AWQ Marlin kernel without importing gptqmodel in every session.

Importing gptqmodel (it pulls in datasets, torchao and its model zoo) and its JIT loader's check of
the Marlin sources cost 6.6-7.5 s in every awq-marlin session on the H100 (issue 9). The kernel is a
torch.ops library that needs nothing from gptqmodel's Python once built. So:

  - the first session on a machine builds (or loads) it through gptqmodel as before, then copies the
    library file into qbench's kernel cache, in a folder keyed by torch's version, its CUDA version,
    the target architectures and the text of gptqmodel's `version.py` (a new gptqmodel, torch or
    target builds afresh); the copy is written under a temporary name and renamed, and its sha256 goes
    into the folder's qbench marker (qbench.kernels), so a torn or altered copy is never loaded;
  - every session, the first included, then runs the same Python below: the AWQ-to-Marlin repacking
    and the GEMM call of gptqmodel 7.6's `AwqMarlinLinear` (adapted from vLLM, Apache-2.0), op for
    op, on the library's ops `torch.ops.gptqmodel_marlin_fp16.*`;
  - a later session loads the cached file with `torch.ops.load_library` and never imports gptqmodel.

Where the cached file cannot be loaded, the session goes back through gptqmodel and its notes say so.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

from qbench import formats

NAMESPACE = "gptqmodel_marlin_fp16"
LIBRARY = "gptqmodel_marlin_fp16_ops"
OPS = ("gptq_marlin_gemm_fp16", "awq_marlin_repack")
PACK = 8  # 4-bit values per int32


def scalar_type_id(mantissa: int, exponent: int = 0, signed: bool = False, bias: int = 0,
                   finite_values_only: bool = False, nan_repr: int = 1) -> int:
    """vLLM's ScalarType.id, which the Marlin op takes for the weight type: exponent (8 bits),
    mantissa (8), signed (1), bias (32), finite-values-only (1), NaN representation (8; IEEE 754 = 1,
    the default of an integer type), packed from the low bit up."""
    value, offset = 0, 0
    for member, width in ((exponent, 8), (mantissa, 8), (int(signed), 1), (bias, 32),
                          (int(finite_values_only), 1), (nan_repr, 8)):
        value |= (member & ((1 << width) - 1)) << offset
        offset += width
    return value


UINT4 = scalar_type_id(4)  # scalar_types.uint4: AWQ's unsigned 4 bits with separate zero points


# ---- the library -----------------------------------------------------------------------------------
_state: dict[str, str] = {}


def _gptqmodel_root() -> Path | None:
    try:
        spec = importlib.util.find_spec("gptqmodel")  # finds the package without running its __init__
    except ValueError:  # imported without a spec (a stand-in)
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Where this torch, CUDA, target list and gptqmodel keep their copy of the library: keyed as
    qbench's own kernel builds are (`qbench.kernels.build_key`), with gptqmodel's `version.py` as
    the source."""
    from qbench.kernels import build_key, cache_root

    root = _gptqmodel_root()
    version = root / "version.py" if root else None
    return cache_root() / f"marlin-fp16-{build_key([version] if version and version.exists() else [], [])}"


def _ops_loaded() -> bool:
    namespace = getattr(torch.ops, NAMESPACE, None)
    try:
        return namespace is not None and all(hasattr(namespace, op) for op in OPS)
    except RuntimeError:
        return False


def loaded_library_path() -> Path | None:
    """The Marlin library this process has mapped (after gptqmodel loaded it), from /proc/self/maps."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, dev, inode[, path]
        path = Path(fields[5]) if len(fields) == 6 else None
        if path and path.name.startswith(LIBRARY) and path.suffix == ".so" and path.is_file():
            return path
    return None


def store_copy(source: Path, folder: Path) -> Path:
    """Copy the built library into `folder` whole or not at all (`qbench.model.cache.write_whole`): a
    reader sees the whole file or none, and two sessions storing at once both end with a whole file.
    The folder's marker records the copy's sha256 (and makes the folder qbench's: `cache clear
    --kernels` removes it)."""
    from qbench.kernels import mark
    from qbench.model.cache import file_digest, write_whole

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{LIBRARY}.so"
    write_whole(target, lambda out: shutil.copyfile(source, out))
    mark(folder, {target.name: file_digest(target)})
    return target


def _damaged(cached: Path) -> str:
    """Why the cached copy is not the one qbench wrote ('' where it is): its sha256 against the marker's."""
    from qbench.kernels import marked_files
    from qbench.model.cache import file_digest

    recorded = marked_files(cached.parent).get(cached.name)
    if recorded is None:
        return "no sha256 recorded with it"
    return "" if file_digest(cached) == recorded else "its sha256 differs from the one recorded when it was copied"


def ensure_library() -> str:
    """Make the Marlin ops callable in this process; returns one line saying how (for the notes)."""
    if "how" in _state:
        return _state["how"]
    folder = cache_dir()
    cached = folder / f"{LIBRARY}.so"
    failure = damaged = ""
    if cached.is_file():
        damaged = _damaged(cached)
        if damaged:
            cached.unlink(missing_ok=True)
            failure = f"removed: {damaged}"
        else:
            try:
                torch.ops.load_library(str(cached))
            except (OSError, RuntimeError) as error:
                failure = f"{type(error).__name__}: {str(error)[:120]}"
        if not failure and _ops_loaded():
            _state["how"] = "Marlin: gptqmodel's library from qbench's kernel cache (gptqmodel not imported)"
            return _state["how"]
        failure = failure or f"ops {', '.join(OPS)} missing from it"
    from gptqmodel.utils.marlin import marlin_runtime_error, prewarm_marlin_extension

    if not prewarm_marlin_extension(torch.float16):
        raise RuntimeError(f"gptqmodel Marlin kernel did not build: {marlin_runtime_error(torch.float16)}")
    if not _ops_loaded():
        raise RuntimeError(f"gptqmodel loaded its Marlin library but torch.ops.{NAMESPACE} lacks {', '.join(OPS)}")
    how = "Marlin: library built or loaded through gptqmodel"
    if failure:
        how += f" (qbench's cached copy did not load: {failure})"
    source = loaded_library_path()
    if source is None:
        how += "; its file was not found in /proc/self/maps, so later sessions import gptqmodel too"
    elif not failure or damaged:  # a copy that did not load would not load again; a damaged one is made anew
        store_copy(source, folder)
        how += "; copied into qbench's kernel cache for later sessions"
    _state["how"] = how
    return how


def ops():
    return getattr(torch.ops, NAMESPACE)


# ---- AWQ tensors to Marlin's layout (gptqmodel 7.6 utils/marlin.py, from vLLM) ------------------------
def scale_perms() -> tuple[list[int], list[int]]:
    grouped = [i + 8 * j for i in range(8) for j in range(8)]
    single = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    return grouped, single


def permute_scales(scales: torch.Tensor, size_k: int, size_n: int, group_size: int) -> torch.Tensor:
    grouped, single = scale_perms()
    perm = grouped if 0 < group_size < size_k else single
    index = torch.tensor(perm, dtype=torch.long, device=scales.device)
    return scales.reshape(-1, len(perm)).index_select(1, index).reshape(-1, size_n).contiguous()


def permute_bias(bias: torch.Tensor) -> torch.Tensor:
    _, single = scale_perms()
    index = torch.tensor(single, dtype=torch.long, device=bias.device)
    return bias.reshape(-1, len(single)).index_select(1, index).reshape(bias.shape).contiguous()


def awq_to_marlin_zero_points(qzeros: torch.Tensor, groups: int, size_n: int) -> torch.Tensor:
    """AWQ's packed zero points in Marlin's layout: unpacked in column order (undoing AWQ's nibble
    interleave), permuted as Marlin permutes grouped scales, and packed again in AWQ's interleave
    (gptqmodel's `awq_to_marlin_zero_points`, which unpacks, undoes, permutes and re-interleaves)."""
    values = formats.unpack_columns(qzeros, formats.AWQ_ORDER)  # [groups, N]
    grouped, _ = scale_perms()
    values = values.reshape(-1, len(grouped))[:, grouped].reshape(groups, size_n)
    return formats.pack_columns(values, formats.AWQ_ORDER)


def pad_last(x: torch.Tensor, size: int, padded: int) -> torch.Tensor:
    return x if padded == size else torch.nn.functional.pad(x, (0, padded - size))


def use_atomic_add(size_n: int, size_k: int, device: torch.device) -> bool:
    """gptqmodel's rule: atomic adds beat the global reduce only for small N and large K (sm90+ with
    fp16 here)."""
    return device.type == "cuda" and size_n < 2048 and size_k >= 2048


class MarlinAwqWeights:
    """One layer's AWQ tensors repacked for the Marlin op, and the call that multiplies by them."""

    def __init__(self, tensors: dict[str, torch.Tensor], in_features: int, out_features: int,
                 bias: torch.Tensor | None, group_size: int):
        device = tensors["qweight"].device
        self.n, self.k = out_features, in_features
        group = -1 if group_size == in_features else group_size  # one group over K is Marlin's "-1"
        self.pk, self.pn = formats.marlin_padded_shape(in_features, out_features, group)
        dn, dk = self.pn - self.n, self.pk - self.k
        groups, padded_groups = (in_features // group_size, self.pk // group) if group > 0 else (1, 1)
        qweight = tensors["qweight"].to(device).contiguous()
        qzeros = tensors["qzeros"].to(device).contiguous()
        scales = tensors["scales"].to(device, torch.float16).contiguous()
        if dn or dk:
            qweight = torch.nn.functional.pad(qweight, (0, dn // PACK, 0, dk))
            qzeros = torch.nn.functional.pad(qzeros, (0, dn // PACK, 0, padded_groups - groups))
            scales = torch.nn.functional.pad(scales, (0, dn, 0, padded_groups - scales.shape[0] if group > 0 else 0))
        self.qweight = ops().awq_marlin_repack(qweight, self.pk, self.pn, 4)
        self.scales = permute_scales(scales, self.pk, self.pn, group)
        self.qzeros = awq_to_marlin_zero_points(qzeros, padded_groups, self.pn)
        if bias is not None:
            bias = permute_bias(pad_last(bias.detach().to(device, torch.float16), self.n, self.pn))
        self.bias = bias
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        self.workspace = torch.zeros(max(sms, 128), dtype=torch.int32, device=device)
        self.empty = torch.empty(0, dtype=torch.int32, device=device)  # no act-order: g_idx and perm
        self.atomic = use_atomic_add(self.pn, self.pk, device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.qweight, self.qzeros, self.scales]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = pad_last(x.reshape(-1, x.shape[-1]).to(torch.float16), self.k, self.pk)
        out = ops().gptq_marlin_gemm_fp16(
            flat, None, self.qweight, self.bias, self.scales, None, self.qzeros, self.empty, self.empty,
            self.workspace, UINT4, flat.shape[0], self.pn, self.pk, True, self.atomic, True, False,
        )
        if self.pn != self.n:
            out = out[:, : self.n].contiguous()
        return out.reshape(*x.shape[:-1], self.n).to(x.dtype)

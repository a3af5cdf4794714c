"""Local caches of what every session of a cell would otherwise make again: quantised synthetic
weights, and the reference logits the correctness gate compares against.

Synthetic weights are the same in every session of a cell (same seed), so quantising a 7B model
round-to-nearest in each of them is waste. The first session quantises and stores each quantised
layer's tensors as the format holds them before any kernel repacks them (what `from_checkpoint_
tensors` reads, as for a pre-quantised checkpoint); later sessions read them straight to the device
and build their modules from them. The first session also stores the reference logits (the model on
the plain path with the dequantised weights, over the cell's token stream); later sessions compare
their timed logits with those instead of recomputing them. What each session still checks for
itself: the stored bytes against the format's formula, every layer's kernel against its dequantised
weight, and every timed block's logits against the reference.

Keys hash everything that decides the tensors: the model's config, the backend (name, class, its
cache format), group size, seed, compute dtype, device, and the versions of torch, transformers,
qbench and the backend's packages. Entries are written to a temporary file and renamed into place,
so a reader sees a whole file or none, and two runs filling one entry at once each get a whole file;
a file whose header promises more bytes than it has (torn by something else) is deleted and rebuilt,
never loaded. The cache is bounded (QBENCH_CACHE_GB, default 40): the least recently used entries go
first. Folder: $QBENCH_CACHE_DIR, default ~/.cache/qbench/weights. `qbench cache` lists and clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1
SEPARATOR = "::"  # module name SEPARATOR tensor name, in the flat safetensors file


def write_whole(path: Path, make: Callable[[Path], None]) -> None:
    """`make(temporary path)` writes the file beside `path` (a `.*.tmp` name unique to this writer);
    it is synced and renamed into place, atomic: readers see the old file, the new one or none, and
    two writers at once each leave a whole file. A failed writer leaves no temporary behind."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        make(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cache_dir() -> Path:
    return Path(os.environ.get("QBENCH_CACHE_DIR") or Path.home() / ".cache" / "qbench" / "weights")


def cache_limit_bytes() -> int:
    return int(float(os.environ.get("QBENCH_CACHE_GB", "40")) * 1e9)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def weights_key(spec: Any, backend: Any, group_size: int, seed: int, device_name: str) -> tuple[str, dict]:
    """The key of a configuration's synthetic weights, and what it hashes (kept in the entry)."""
    import torch
    import transformers

    import qbench

    ingredients = {
        "cache_format": CACHE_FORMAT,
        "model": spec.hf_config,
        "backend": backend.name,
        "backend_class": f"{type(backend).__module__}.{type(backend).__qualname__}",
        "backend_format": getattr(backend, "cache_format", 1),
        "group_size": group_size,
        "seed": seed,
        "compute_dtype": backend.compute_dtype,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "qbench": qbench.__version__,
        "packages": {requirement: _version(requirement) for requirement in sorted(backend.packages.values())},
    }
    digest = hashlib.sha256(json.dumps(ingredients, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return digest, ingredients


def reference_key(weights: str, settings: dict) -> str:
    return weights + "-ref-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Entry:
    key: str
    path: Path
    bytes: int
    last_used: float
    about: dict


class Cache:
    def __init__(self, folder: Path | None = None, limit_bytes: int | None = None):
        self.folder = folder or cache_dir()
        self.limit = cache_limit_bytes() if limit_bytes is None else limit_bytes

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    # ---- reading ----------------------------------------------------------------------------
    def load(self, key: str, device: str) -> tuple[dict[str, Any] | None, str]:
        """(flat tensors, '') on a hit; (None, why) on a miss. A damaged file is removed."""
        from safetensors.torch import load_file

        from qbench.errors import UserError
        from qbench.weights import check_safetensors

        path = self.path(key)
        if not path.is_file():
            return None, "not cached"
        try:
            check_safetensors(path)
            tensors = load_file(str(path), device=device)
        except (UserError, OSError, RuntimeError, ValueError) as error:
            path.unlink(missing_ok=True)
            return None, f"cached file was damaged and is rebuilt ({str(error)[:120]})"
        os.utime(path)  # least recently used goes first
        return tensors, ""

    def file(
        self, key: str, suffix: str, make: Callable[[Path], None], check: Callable[[Path], None], size_hint: int = 0
    ) -> tuple[Path, str]:
        """A whole-file entry (a GGUF, say): (its path, "hit") where a whole one is cached, else
        `make(temporary path)` writes it and it is renamed into place: (its path, "stored"). `check`
        raises on a damaged file, which is deleted and made again."""
        path = self.folder / f"{key}{suffix}"
        why = ""
        if path.is_file():
            try:
                check(path)
            except Exception as error:  # any failure of the check means the same: not whole
                path.unlink(missing_ok=True)
                why = f"; the cached file was damaged and is rebuilt ({str(error)[:120]})"
            else:
                os.utime(path)
                return path, "hit"
        self.folder.mkdir(parents=True, exist_ok=True)
        if size_hint and shutil.disk_usage(self.folder).free < size_hint * 1.1:
            raise OSError(f"{size_hint / 1e9:.1f} GB does not fit the free disk under {self.folder}")
        self._write(key, path, make)
        return path, "stored" + why

    # ---- writing ----------------------------------------------------------------------------
    def _write(self, key: str, path: Path, make: Callable[[Path], None]) -> None:
        """Write the entry whole (`write_whole`), then bound the cache."""
        write_whole(path, make)
        self.evict(keep=key)

    def store(self, key: str, tensors: dict[str, Any], about: dict) -> str:
        """Write an entry whole or not at all; returns '' or why it was not written."""
        from safetensors.torch import save_file

        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.limit:
            return f"not cached: {size / 1e9:.1f} GB exceeds the cache's {self.limit / 1e9:.1f} GB (QBENCH_CACHE_GB)"
        self.folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.folder).free < size * 1.1:
            return f"not cached: {size / 1e9:.1f} GB does not fit the free disk under {self.folder}"
        flat = {name: tensor.contiguous() for name, tensor in tensors.items()}
        metadata = {"about": json.dumps(about, default=str)}
        try:
            self._write(key, self.path(key), lambda out: save_file(flat, str(out), metadata=metadata))
        except OSError as error:
            return f"not cached: {error}"
        return ""

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used entries until the cache fits its limit."""
        removed = []
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.bytes for e in entries)
        for entry in entries:
            if total <= self.limit:
                break
            if entry.key == keep:
                continue
            entry.path.unlink(missing_ok=True)
            total -= entry.bytes
            removed.append(entry.key)
        self.remove_stale_temporaries()
        return removed

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> None:
        """Temporary files of writers that died an hour or more ago (a live writer renames its file)."""
        for temporary in self.folder.glob(".*.tmp"):
            try:
                if time.time() - temporary.stat().st_mtime > older_than_s:
                    temporary.unlink()
            except OSError:
                pass

    # ---- listing ----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        found = []
        if not self.folder.is_dir():
            return found
        for path in [*self.folder.glob("*.safetensors"), *self.folder.glob("*.gguf")]:
            try:
                stat = path.stat()
                about = _about(path) if path.suffix == ".safetensors" else _gguf_about(path)
            except OSError:
                continue
            found.append(Entry(path.stem, path, stat.st_size, stat.st_mtime, about))
        return found

    def clear(self) -> int:
        removed = 0
        for entry in self.entries():
            entry.path.unlink(missing_ok=True)
            removed += entry.bytes
        for temporary in self.folder.glob(".*.tmp") if self.folder.is_dir() else []:
            temporary.unlink(missing_ok=True)
        return removed


def _about(path: Path) -> dict:
    """The entry's description from its safetensors header (no tensor is read); a damaged entry,
    which the next session that needs it rebuilds, says so."""
    from qbench.errors import UserError
    from qbench.weights import check_safetensors

    try:
        return json.loads(check_safetensors(path).get("__metadata__", {}).get("about", "{}"))
    except (UserError, ValueError):
        return {"what": "damaged: rebuilt by the next session that needs it"}


def _gguf_about(path: Path) -> dict:
    """A cached GGUF's description (its `qbench.about` field; metadata only is read)."""
    try:
        from gguf import GGUFReader, LlamaFileType

        fields = GGUFReader(str(path)).fields
        about = json.loads(fields["qbench.about"].contents()) if "qbench.about" in fields else {}
        kind = LlamaFileType(int(fields["general.file_type"].contents())).name.removeprefix("MOSTLY_")
        name = fields["general.name"].contents() if "general.name" in fields else "?"
        return {**about, "what": f"GGUF {kind}: {about.get('what', name)}"}
    except Exception:  # a torn file: the next session that needs it rebuilds it
        return {"what": "damaged: rebuilt by the next session that needs it"}


def flatten(by_module: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{module}{SEPARATOR}{name}": tensor
        for module, tensors in by_module.items()
        for name, tensor in tensors.items()
    }


def unflatten(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_module: dict[str, dict[str, Any]] = {}
    for key, tensor in flat.items():
        module, _, name = key.partition(SEPARATOR)
        by_module.setdefault(module, {})[name] = tensor
    return by_module

"""Local caches of what every session of a cell would otherwise make again: quantised synthetic
weights, and the reference logits the correctness gate compares against; also a GGUF's dequantised tensors and
configuration (`build.load_gguf`, keyed by the file's path, size and modification time and the
software), so a later session loading the same file skips transformers' parse and dequantisation.

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
so a reader sees a whole file or none, and two runs filling one entry at once each get a whole file.
Each entry is `qbench-<key>.<suffix>` with a manifest beside it holding its size and sha256, checked
on every read: a file damaged afterwards (torn, or bytes flipped) is deleted and rebuilt, never
loaded, and the session's note says so. Files without a manifest are not qbench's: never read,
listed, evicted or cleared. The cache is bounded (QBENCH_CACHE_GB, default 40): the least recently
used entries go first. Folder: $QBENCH_CACHE_DIR, default ~/.cache/qbench/weights. `qbench cache`
lists and clears it. A cache that cannot be written means "not cached" and why, never a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_FORMAT = 2  # 2: entries carry qbench's prefix and a manifest with their digest
PREFIX = "qbench-"  # every file the cache writes starts with it (temporaries with "." before it)
MANIFEST = ".entry.json"  # qbench-<key>.entry.json: the entry's file, bytes, digest and description
SUFFIXES = (".safetensors", ".gguf")
CHUNK_BYTES = 64 << 20  # the digest's chunk: chunks are hashed in parallel
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
    from qbench import settings

    return settings.cache_dir()


def enabled() -> bool:
    """Whether sessions use the weights cache (QBENCH_WEIGHTS_CACHE=0 turns it off)."""
    return os.environ.get("QBENCH_WEIGHTS_CACHE", "1") != "0"


def cache_limit_bytes() -> int:
    from qbench import settings

    return settings.cache_limit_bytes()


def file_digest(path: Path) -> str:
    """sha256 of the file, chunk by chunk (CHUNK_BYTES) on up to 8 threads (hashlib and reads let go of
    the GIL), then of the chunks' digests: sha256 runs at one core's speed, so 8 threads hash a large
    entry about 8 times faster than one."""
    size = path.stat().st_size

    def chunk(offset: int) -> bytes:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            file.seek(offset)
            left = min(CHUNK_BYTES, size - offset)
            while left > 0:
                block = file.read(min(left, 8 << 20))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
        return digest.digest()

    offsets = list(range(0, size, CHUNK_BYTES)) or [0]
    if len(offsets) == 1:
        parts = [chunk(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(offsets), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(chunk, offsets))
    return f"sha256-chunks-{CHUNK_BYTES >> 20}m:" + hashlib.sha256(b"".join(parts)).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def key_of(ingredients: dict, length: int = 24) -> str:
    """A cache key: the sha256 of `ingredients` as sorted JSON (what is not JSON as its str), cut to
    `length` hex digits. Every key of qbench's caches is made here."""
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True, default=str).encode()).hexdigest()[:length]


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
    return key_of(ingredients), ingredients


def reference_key(weights: str, settings: dict) -> str:
    return weights + "-ref-" + key_of(settings, 12)


@dataclass
class Entry:
    key: str
    path: Path  # the entry's file (it may be missing: a damaged entry)
    bytes: int
    last_used: float
    about: dict
    manifest: Path

    @property
    def files(self) -> list[Path]:
        """What removing the entry removes: its manifest and its file under either suffix."""
        return [self.path.with_name(f"{PREFIX}{self.key}{suffix}") for suffix in SUFFIXES] + [self.manifest]


DAMAGED = {"what": "damaged: rebuilt by the next session that needs it"}


class Cache:
    """Entries are the files qbench wrote: `qbench-<key>.safetensors` or `.gguf`, each with its
    manifest `qbench-<key>.entry.json` (written after the file), which records the file's size and
    sha256. Only an entry with a manifest is read, listed, evicted or cleared; any other file in the
    folder is not qbench's and is never touched. Every read checks the file against its digest; a
    damaged entry is removed and rebuilt, and the caller's note says so. A folder that cannot be
    written (read-only, a file, no home) means `not cached` with the reason, never a failed session."""

    def __init__(self, folder: Path | None = None, limit_bytes: int | None = None):
        self.folder = folder or cache_dir()
        self.limit = cache_limit_bytes() if limit_bytes is None else limit_bytes

    def path(self, key: str, suffix: str = ".safetensors") -> Path:
        return self.folder / f"{PREFIX}{key}{suffix}"

    def manifest(self, key: str) -> Path:
        return self.folder / f"{PREFIX}{key}{MANIFEST}"

    # ---- reading ----------------------------------------------------------------------------
    def _verified(self, key: str, suffix: str) -> tuple[Path | None, str]:
        """(the entry's file, "") where its manifest is there and the file matches its digest;
        (None, why) otherwise. A damaged entry is removed (both files)."""
        path, manifest = self.path(key, suffix), self.manifest(key)
        try:
            if not manifest.is_file():
                return None, "not cached"
            record = json.loads(manifest.read_text())
            if not path.is_file():
                raise ValueError("its file is missing")
            if path.stat().st_size != record["bytes"]:
                raise ValueError(f"{path.stat().st_size} bytes, {record['bytes']} written")
            if file_digest(path) != record["digest"]:
                raise ValueError("its sha256 differs from the one written with it")
        except (OSError, ValueError, KeyError, TypeError) as error:
            self._remove(path, manifest)
            return None, f"cached file was damaged and is rebuilt ({str(error)[:120]})"
        with contextlib.suppress(OSError):  # least recently used goes first; a read-only cache still reads
            os.utime(path)
        return path, ""

    def load(self, key: str, device: str) -> tuple[dict[str, Any] | None, str]:
        """(flat tensors, '') on a hit; (None, why) on a miss. A damaged entry is removed."""
        from safetensors.torch import load_file

        from qbench.errors import UserError
        from qbench.model.weights import check_safetensors

        path, why = self._verified(key, ".safetensors")
        if path is None:
            return None, why
        try:
            check_safetensors(path)
            tensors = load_file(str(path), device=device)
        except (UserError, OSError, RuntimeError, ValueError) as error:
            self._remove(path, self.manifest(key))
            return None, f"cached file was damaged and is rebuilt ({str(error)[:120]})"
        return tensors, ""

    def file(
        self, key: str, suffix: str, make: Callable[[Path], None], check: Callable[[Path], None], size_hint: int = 0
    ) -> tuple[Path, str]:
        """A whole-file entry (a GGUF, say): (its path, "hit") where a whole one is cached, else
        `make(temporary path)` writes it and it is renamed into place: (its path, "stored"). `check`
        raises on a damaged file, which is deleted and made again. Where the cache cannot be written
        and this is a session's worker, the file is made in the session's scratch folder instead:
        (that path, "not cached: why")."""
        path, why = self._verified(key, suffix)
        if path is not None:
            try:
                check(path)
            except Exception as error:  # any failure of the check means the same: not whole
                self._remove(path, self.manifest(key))
                why = f"cached file was damaged and is rebuilt ({str(error)[:120]})"
            else:
                return path, "hit"
        why = "" if why == "not cached" else f"; {why}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if size_hint and shutil.disk_usage(self.folder).free < size_hint * 1.1:
                raise OSError(f"{size_hint / 1e9:.1f} GB does not fit the free disk under {self.folder}")
            self._write(key, suffix, make, {})
        except OSError as error:
            scratch = _scratch()
            if scratch is None:
                raise
            uncached = scratch / f"uncached-{key}{suffix}"
            make(uncached)
            return uncached, f"not cached ({_why(error)}): made in the session's scratch folder"
        return self.path(key, suffix), "stored" + why

    # ---- writing ----------------------------------------------------------------------------
    def _write(self, key: str, suffix: str, make: Callable[[Path], None], about: dict) -> None:
        """Write the entry's file whole (`write_whole`), hashing it before it is renamed into place,
        then its manifest; then bound the cache."""
        record: dict[str, Any] = {"cache_format": CACHE_FORMAT, "key": key, "file": self.path(key, suffix).name}

        def make_and_hash(out: Path) -> None:
            make(out)
            described = about or (_gguf_about(out) if suffix == ".gguf" else {})
            record.update(bytes=out.stat().st_size, digest=file_digest(out), about=described)

        write_whole(self.path(key, suffix), make_and_hash)
        write_whole(self.manifest(key), lambda out: out.write_text(json.dumps(record, default=str)))
        self.evict(keep=key)

    def store(self, key: str, tensors: dict[str, Any], about: dict) -> str:
        """Write an entry whole or not at all; returns '' or why it was not written."""
        from safetensors.torch import save_file

        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.limit:
            return f"not cached: {size / 1e9:.1f} GB exceeds the cache's {self.limit / 1e9:.1f} GB (QBENCH_CACHE_GB)"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.folder).free < size * 1.1:
                return f"not cached: {size / 1e9:.1f} GB does not fit the free disk under {self.folder}"
            flat = {name: tensor.contiguous() for name, tensor in tensors.items()}
            metadata = {"about": json.dumps(about, default=str)}
            self._write(key, ".safetensors", lambda out: save_file(flat, str(out), metadata=metadata), about)
        except OSError as error:
            return f"not cached: {_why(error)}"
        return ""

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used entries until the cache fits its limit (qbench's entries only)."""
        removed = []
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total = sum(e.bytes for e in entries)
        for entry in entries:
            if total <= self.limit:
                break
            if entry.key == keep:
                continue
            self._remove(*entry.files)
            total -= entry.bytes
            removed.append(entry.key)
        self.remove_stale_temporaries()
        return removed

    def _temporaries(self) -> list[Path]:
        """write_whole's temporary files of qbench's entries: `.qbench-....tmp`."""
        try:
            return list(self.folder.glob(f".{PREFIX}*.tmp"))
        except OSError:
            return []

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> None:
        """Temporary files of writers that died an hour or more ago (a live writer renames its file)."""
        for temporary in self._temporaries():
            try:
                if time.time() - temporary.stat().st_mtime > older_than_s:
                    temporary.unlink()
            except OSError:
                pass

    @staticmethod
    def _remove(*paths: Path) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # ---- listing ----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """qbench's entries: the files named by a manifest (`qbench-<key>.entry.json`); nothing else
        in the folder. No file is read beyond the manifests; a damaged entry says so."""
        found = []
        try:
            manifests = sorted(self.folder.glob(f"{PREFIX}*{MANIFEST}")) if self.folder.is_dir() else []
        except OSError:
            return found
        for manifest in manifests:
            key = manifest.name[len(PREFIX) : -len(MANIFEST)]
            try:
                record = json.loads(manifest.read_text())
                path = self.folder / record["file"]
                if path.name not in (f"{PREFIX}{key}{suffix}" for suffix in SUFFIXES):
                    continue  # names a file that is not this entry's: never touched
                about = record.get("about") or {}
                size = record["bytes"]
            except (OSError, ValueError, KeyError, TypeError):
                path, about, size = self.path(key), DAMAGED, 0
            try:
                stat = path.stat()
                last_used = stat.st_mtime
                if stat.st_size != size:
                    about = DAMAGED
            except OSError:
                last_used, about = manifest.stat().st_mtime, DAMAGED
            found.append(Entry(key, path, size, last_used, about, manifest))
        return found

    def clear(self) -> tuple[int, int]:
        """Remove every qbench entry (and qbench's temporaries); returns (entries, bytes) removed."""
        entries = self.entries()
        for entry in entries:
            self._remove(*entry.files)
        self._remove(*self._temporaries())
        return len(entries), sum(e.bytes for e in entries)

    def others(self) -> int:
        """How many files in the folder are not qbench's (left alone)."""
        ours = {p for e in self.entries() for p in e.files} | set(self._temporaries())
        try:
            return sum(1 for p in self.folder.iterdir() if p not in ours) if self.folder.is_dir() else 0
        except OSError:
            return 0


def _why(error: OSError) -> str:
    return f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)


def _scratch() -> Path | None:
    """The session's scratch folder where this process is a session's worker (its working folder,
    made by qbench.execute.worker and removed with the session), else None."""
    from qbench.scratch import OWNER_FILE, SCRATCH_PREFIX

    try:
        here = Path.cwd()
    except OSError:
        return None
    return here if here.name.startswith(SCRATCH_PREFIX) and (here / OWNER_FILE).is_file() else None


def _gguf_about(path: Path) -> dict:
    """A cached GGUF's description for its manifest (its `qbench.about` field; metadata only is read)."""
    try:
        from gguf import LlamaFileType

        from qbench.model import gguf_files

        fields = gguf_files.reader(path).fields
        about = json.loads(fields["qbench.about"].contents()) if "qbench.about" in fields else {}
        kind = LlamaFileType(int(fields["general.file_type"].contents())).name.removeprefix("MOSTLY_")
        name = fields["general.name"].contents() if "general.name" in fields else "?"
        return {**about, "what": f"GGUF {kind}: {about.get('what', name)}"}
    except Exception:  # read when the entry is written: its digest, not this, says whether it is whole
        return {"what": "GGUF (its metadata could not be read)"}


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

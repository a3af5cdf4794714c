"""First-run builds of CUDA extensions from a maintained package's own sources, cached.

The cache key hashes the sources, torch's version, its CUDA version and the target architectures,
so a cached build is reused only where it was built for the same thing; a different one builds
afresh. The cache lives in $QBENCH_KERNEL_CACHE (default ~/.cache/qbench/kernels) and can be copied
to an offline machine of the same software. Progress goes to stderr while the compiler runs.

Each build folder qbench makes carries a marker file (MARKER) that qbench alone writes; `qbench
cache` lists and `cache clear --kernels` removes only folders with it, never anything else that
sits under the cache's root (the root may be a folder the user also keeps other things in).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

MARKER = ".qbench-build"


def cache_root() -> Path:
    from qbench import settings

    return settings.kernel_cache()


def mark(folder: Path, files: dict[str, str] | None = None) -> None:
    """Write qbench's marker into the build folder it made: what it is, and `files` (name -> sha256)
    that a later session checks before it uses them."""
    from qbench.model.cache import write_whole

    about = {"made_by": "qbench", "folder": folder.name, "files": files or {}}
    write_whole(folder / MARKER, lambda out: out.write_text(json.dumps(about)))


def build_folder(name: str) -> Path:
    """The build folder `name` under the cache's root, created where missing, with qbench's marker."""
    folder = cache_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        mark(folder)
    return folder


def marked_files(folder: Path) -> dict[str, str]:
    """The files (name -> sha256) qbench's marker in `folder` records; {} where it has none."""
    try:
        return dict(json.loads((folder / MARKER).read_text()).get("files", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def builds() -> list[Path]:
    """The build folders qbench made: real folders (not links) right under the root with its marker."""
    root = cache_root()
    found = []
    try:
        children = list(root.iterdir()) if root.is_dir() else []
    except OSError:
        return []
    for child in children:
        try:
            if stat.S_ISDIR(child.lstat().st_mode) and stat.S_ISREG((child / MARKER).lstat().st_mode):
                found.append(child)
        except OSError:
            continue
    return sorted(found)


def clear_builds() -> list[Path]:
    """Remove the build folders qbench made (and only those); returns them."""
    removed = builds()
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def _arch_list() -> str:
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def build_key(files: list[Path], flags: list[str]) -> str:
    import torch

    digest = hashlib.sha256()
    for source in sorted(set(files)):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(" ".join([torch.__version__, str(torch.version.cuda), _arch_list(), *flags]).encode())
    return digest.hexdigest()[:16]


class Ticker:
    """Says what a long step is doing while it runs, so a first-run build is not a silent hang: a
    line after `first_after` seconds (at once by default), then one every `every` seconds, and how it
    ended. Lines go through the worker's progress channel, which the parent shows as they come."""

    def __init__(self, what: str, first_after: float = 0.0, every: float = 15.0):
        self.what, self.first_after, self.every = what, first_after, every
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.announced = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _say(self, text: str) -> None:
        from qbench.scratch import progress

        progress(text)

    def _run(self) -> None:
        if self.first_after and self.stop.wait(self.first_after):
            return
        self.announced = True
        self._say(f"{self.what} ...")
        while not self.stop.wait(self.every):
            self._say(f"{self.what}: {time.monotonic() - self.start:.0f} s")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.announced:
            outcome = "failed" if exc[0] else "done"
            self._say(f"{self.what}: {outcome} in {time.monotonic() - self.start:.0f} s")


def build_extension(
    name: str,
    sources: list[Path],
    include_dirs: list[Path],
    cflags: list[str],
    cuda_cflags: list[str],
) -> ModuleType:
    """Load `name` from the cache, building it first if this exact build is not there."""
    import torch  # noqa: F401  (the extension links against torch's libraries)

    headers = [p for d in include_dirs for p in d.rglob("*") if p.suffix in (".h", ".cuh", ".hpp")]
    key = build_key(sources + headers, cflags + cuda_cflags)
    build_dir = build_folder(f"{name}-{key}")  # a build of an older qbench gets its marker here
    library = build_dir / f"{name}.so"
    if not library.exists():
        from torch.utils.cpp_extension import load

        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _arch_list())
        with Ticker(f"building {name} for sm_{_arch_list().replace('.', '')} (first run; cached afterwards)"):
            module = load(
                name=name,
                sources=[str(s) for s in sources],
                extra_include_paths=[str(d) for d in include_dirs],
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_cflags,
                build_directory=str(build_dir),
                verbose=False,
            )
        sys.modules[name] = module
        return module
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_file_location(name, str(library), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module

"""One parse of a GGUF file per process.

gguf's `GGUFReader` parses every metadata field when it is made, a GGUF's tokenizer included (its
vocabulary and merges are fields of tens of thousands of strings each), and a real-weight session
opens the same file several times: the check that it is whole, the tokenizer, the 16-bit reference
for the quality figures, the backend's load and the gate's reference, and llama.cpp's byte count and
file type. transformers' GGUF loading makes two readers of its own for one `from_pretrained` (the
configuration, then the tensors) and rebuilds gguf's tensor-name map once for every module of the
model. `reader(path)` keeps the last file's reader, keyed by the file's resolved path, size and
modification time (a file replaced since is parsed again); `read_once()` lends that reader, and a
tensor-name map made once per (architecture, block count), to transformers for the duration of a
load, putting gguf's own functions back after it. A reader is only read from: the tensors' data are
read-only memory maps of the file, and every weight transformers builds is a new tensor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_last: tuple[tuple, Any] | None = None  # ((resolved path, size, mtime ns), its reader)
_name_maps: dict[tuple, Any] = {}


def _key(path: os.PathLike | str) -> tuple:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


def reader(path: os.PathLike | str, _make=None):
    """The file's GGUFReader, parsed once while the file is unchanged (the last file read only)."""
    global _last
    if _make is None:
        from gguf import GGUFReader as _make
    key = _key(path)
    if _last is not None and _last[0] == key:
        return _last[1]
    made = _make(path)
    _last = (key, made)
    return made


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Within it, gguf's `GGUFReader(path)` (read mode) and `get_tensor_name_map` as transformers
    imports them are `reader` and a memoised map; outside it, gguf's own."""
    try:
        import gguf
    except ImportError:  # transformers then says what is missing
        yield
        return
    make, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared(path, mode="r"):
        return reader(path, make) if mode == "r" else make(path, mode)

    def memoised(arch, blocks):
        if (arch, blocks) not in _name_maps:
            _name_maps[(arch, blocks)] = name_map(arch, blocks)
        return _name_maps[(arch, blocks)]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared, memoised
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make, name_map

"""A GGUF file is parsed once a process (`qbench.model.gguf_files`): the reader is kept while the file
is unchanged and parsed again when it is replaced, a file that does not parse is never kept, and
transformers' loading of the tokenizer and the model shares it, with gguf's own functions back after."""

from __future__ import annotations

import os

import pytest

from qbench.model import gguf_files

gguf = pytest.importorskip("gguf")


def _write(path, name: str, padding: int = 0):
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_tensor("weight", np.arange(64 + padding, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_reader_is_kept_while_its_file_is_unchanged_and_made_again_when_it_is_replaced(tmp_path):
    path = tmp_path / "a.gguf"
    _write(path, "first")
    first = gguf_files.reader(path)
    assert gguf_files.reader(str(path)) is first  # a str or a Path: one file
    assert first.fields["general.name"].contents() == "first"
    _write(path, "second, longer", padding=16)
    second = gguf_files.reader(path)
    assert second is not first and second.fields["general.name"].contents() == "second, longer"
    stat = path.stat()  # the same size, a later time: parsed again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert gguf_files.reader(path) is not second
    other = tmp_path / "b.gguf"
    _write(other, "other")
    assert gguf_files.reader(other).fields["general.name"].contents() == "other"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:40])
    for _ in range(2):  # a file that does not parse raises each time: nothing of it is kept
        with pytest.raises(Exception):  # noqa: B017 - gguf's own exceptions, whichever a cut file gives
            gguf_files.reader(cut)


def test_the_tokenizer_and_the_model_of_a_packaged_gguf_parse_it_once(monkeypatch):
    """transformers makes two readers a `from_pretrained` of its own and one for the tokenizer; inside
    `read_once` all of them are the one kept reader, and after it gguf's functions are its own."""
    import torch

    from qbench.model.build import _load_gguf
    from qbench.model.weights import packaged_gguf
    from qbench.session.quality import load_tokenizer
    from qbench.specs import load_model_spec

    spec = load_model_spec("smollm2-135m")
    try:
        path = packaged_gguf(spec)
    except Exception as error:  # noqa: BLE001 - the test extra installs it; a bare machine may not
        pytest.skip(f"no packaged GGUF here: {error}")
    made = []

    class Counted(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            made.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counted)
    monkeypatch.setattr(gguf_files, "_last", None)
    original_map = gguf.get_tensor_name_map
    tokenizer, why = load_tokenizer(spec, "gguf")
    assert tokenizer is not None, why
    model = _load_gguf(path, torch.float32, "cpu")
    assert len(made) == 1, made
    assert gguf.GGUFReader is Counted and gguf.get_tensor_name_map is original_map
    assert model.config.num_hidden_layers == spec.hf_config["num_hidden_layers"]

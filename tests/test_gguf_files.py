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


def test_a_second_load_of_an_unchanged_gguf_reads_its_dequantised_tensors_from_the_weights_cache(monkeypatch, tmp_path):
    """`build.load_gguf` keeps the dequantised tensors and the configuration in the weights cache: a
    later load of the same file (any process: `gguf_files` keeps nothing here) reads them back without
    parsing it, as the same model; a replaced file is parsed again."""
    import torch

    from qbench.formats.gguf_write import write_synthetic
    from qbench.model import build
    from qbench.specs import load_model_spec

    spec = load_model_spec("tiny")
    path = tmp_path / "tiny.gguf"

    def write(seed: int) -> None:
        write_synthetic(build._synthetic(spec, torch.float32, "cpu", seed), spec, path)

    def load(dtype=torch.bfloat16):
        monkeypatch.setattr(gguf_files, "_last", None)  # a new process: no reader kept
        return build.load_gguf(path, dtype, "cpu")

    write(0)
    parsed, state = load()
    assert state == "stored"
    real = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("a cached GGUF was parsed again"))
    cached, state = load()
    assert state == "hit"
    assert repr(cached) == repr(parsed) and cached.config.to_dict() == parsed.config.to_dict()
    assert not cached.training and cached.dtype == torch.bfloat16
    assert cached.config.tie_word_embeddings == (cached.lm_head.weight is cached.model.embed_tokens.weight)
    want, got = parsed.state_dict(), cached.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[name], got[name]) for name in want)
    ids = torch.arange(12)[None]
    with torch.inference_mode():
        assert torch.equal(cached(ids).logits, parsed(ids).logits)
    monkeypatch.setattr(gguf, "GGUFReader", real)
    assert load(torch.float32)[1] == "stored"  # another dtype is another entry
    write(1)  # the file replaced (same size; a later time, whatever the clock's grain): parsed again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    replaced, state = load()
    assert state == "stored"
    assert not torch.equal(replaced.model.layers[0].mlp.up_proj.weight, parsed.model.layers[0].mlp.up_proj.weight)
    monkeypatch.setenv("QBENCH_WEIGHTS_CACHE", "0")
    assert load()[1] == "off"

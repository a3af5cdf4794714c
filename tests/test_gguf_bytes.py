"""GGUF byte accounting (the llama.cpp backends' floor) against the file's own tensor sizes."""

import pytest

from qbench.analysis.floor import step_bytes as formula_bytes
from qbench.formats import gguf_bytes
from qbench.model.build import packaged_gguf
from qbench.specs import load_model_spec

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2():
    return packaged_gguf(load_model_spec("smollm2-135m"))


def test_every_tensor_counts_its_stored_bytes_once(smollm2):
    reader = gguf.GGUFReader(str(smollm2))
    for tensor in reader.tensors:  # the block formula against the reader's own size, per tensor
        assert gguf_bytes.tensor_bytes(tensor.tensor_type.name, int(tensor.n_elements)) == int(tensor.n_bytes)
    counted = gguf_bytes.step_bytes(smollm2, ctx=0)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    whole_file = sum(int(t.n_bytes) for t in reader.tensors)
    # SmolLM2 ties its lm_head to the embedding: the matrix is read whole as lm_head, plus one row.
    assert counted.lm_head == int(embedding.n_bytes)
    assert counted.linear_weights + counted.biases + counted.norms + counted.lm_head == whole_file
    assert counted.embedding_row * int(embedding.shape[-1]) == int(embedding.n_bytes)


def test_mixed_types_and_the_kv_cache(smollm2):
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(smollm2)).tensors}
    assert {"Q4_1", "Q8_0", "F32"} <= types  # this file mixes three types, as K-quants do
    spec = load_model_spec("smollm2-135m")
    f16 = gguf_bytes.step_bytes(smollm2, ctx=512)
    assert f16.kv_cache == formula_bytes(spec, 512).kv_cache  # F16 cache: 2 bytes, as qbench's formula
    q8 = gguf_bytes.step_bytes(smollm2, ctx=512, kv_type="Q8_0")
    assert q8.kv_cache * 32 == f16.kv_cache // 2 * 34  # Q8_0: 34 bytes per 32 elements
    with pytest.raises(ValueError, match="whole blocks"):
        gguf_bytes.tensor_bytes("Q4_0", 48)

"""Bytes one decode step reads from a GGUF model, by class, from the file's own tensor types.

llama.cpp's K-quants mix types per tensor (Q4_K_M keeps some ffn_down and attn_v in Q6_K) and may
quantise the lm_head (`output.weight`), or have none and reuse the token embedding (tied). So the
bytes come from each tensor's GGML type and shape, never from a nominal bits-per-weight:

    tensor bytes   = elements / block size x block bytes       (GGML_QUANT_SIZES of its type)
    linear weights = every blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight
    biases, norms  = every blk.N.*.bias, every *_norm.weight (usually F32)
    embedding row  = token_embd bytes / rows                   (one row is looked up per token)
    lm_head        = output.weight, or the whole token_embd where the file has no output.weight
    KV cache       = layers x 2 x kv heads x head dim x ctx x the KV type's bytes per element
                     (llama.cpp's default cache type is F16; Q8_0 is 34 bytes per 32 elements)
Used by the llama.cpp backends (the floor of their rows); the reader is the `gguf` package.
"""

from __future__ import annotations

from pathlib import Path

from qbench.api import StepBytes

LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def tensor_bytes(type_name: str, elements: int) -> int:
    """Bytes of `elements` values stored as GGML type `type_name`, from the type's block layout."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    if elements % block:
        raise ValueError(f"{elements} elements are not whole blocks of {block} for {type_name}")
    return elements // block * block_bytes


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def step_bytes(path: Path | str, ctx: int, kv_type: str = "F16") -> StepBytes:
    from qbench.model import gguf_files

    reader = gguf_files.reader(path)
    arch = _field(reader, "general.architecture")
    layers = int(_field(reader, f"{arch}.block_count"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv") or heads)
    head_dim = _field(reader, f"{arch}.attention.key_length") or _field(reader, f"{arch}.embedding_length") // heads
    linear = biases = norms = 0
    embedding = lm_head = None
    for tensor in reader.tensors:
        size = tensor_bytes(tensor.tensor_type.name, int(tensor.n_elements))
        parts = tensor.name.split(".")
        if tensor.name == "token_embd.weight":
            rows = int(tensor.shape[-1])  # GGUF lists dimensions innermost first: [hidden, vocab]
            embedding = (size, size // rows)
        elif tensor.name == "output.weight":
            lm_head = size
        elif parts[-1] == "bias":
            biases += size
        elif parts[-2].endswith("norm"):
            norms += size
        elif parts[0] == "blk" and parts[-2] in LINEAR_NAMES:
            linear += size
    if embedding is None:
        raise ValueError(f"{path} has no token_embd.weight")
    kv_per_element = tensor_bytes(kv_type, 32) / 32
    return StepBytes(
        linear_weights=linear,
        biases=biases,
        norms=norms,
        embedding_row=embedding[1],
        lm_head=embedding[0] if lm_head is None else lm_head,  # tied: the embedding matrix is the lm_head
        kv_cache=round(layers * 2 * kv_heads * int(head_dim) * ctx * kv_per_element),
    )

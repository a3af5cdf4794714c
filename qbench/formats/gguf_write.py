"""Synthetic GGUF files for the llama.cpp backends: a spec's seeded weights written as a GGUF that
llama.cpp loads and transformers reads back, then quantised by llama.cpp's own quantiser.

The weights are the tensors of the transformers model every other backend builds from the same spec
and seed (qbench.model.build), written as convert_hf_to_gguf.py writes them: 2-D tensors F16, 1-D ones
(norms, biases) F32, and for the `llama` architecture the q and k rows permuted into llama.cpp's
rotary layout (transformers undoes it when it reads the file). The vocabulary is the spec's size:
a SentencePiece-style list (<unk>, <s>, </s>, the 256 byte tokens, then placeholders), enough for
llama.cpp to load the model; qbench feeds token ids, never text, to synthetic weights.
Specs with rope scaling (Llama 3.1) are refused: llama.cpp reads that scaling from a `rope_freqs`
tensor that transformers does not read back, so the gate could not compare like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # model_type -> GGUF architecture
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
# llama.cpp's file types (llama.h, enum llama_ftype) for the types the backends run.
FTYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


def unsupported_reason(spec: Any) -> str | None:
    """Why a synthetic GGUF cannot be written for `spec` (None where it can)."""
    model_type = spec.hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        return f"no GGUF writer for model_type {model_type!r} (writes {', '.join(ARCHITECTURES)})"
    if spec.hf_config.get("rope_scaling"):
        return (
            "rope scaling (llama.cpp reads it from a rope_freqs tensor transformers does not read back): "
            "give real weights as a .gguf with --weights"
        )
    if spec.hf_config.get("sliding_window") and spec.hf_config.get("use_sliding_window"):
        return "sliding-window attention is not written to synthetic GGUFs"
    return None


def _permute(weight, heads: int):
    """convert_hf_to_gguf.py's q/k permutation: transformers' half-split rotary pairs to llama.cpp's
    interleaved pairs (the `llama` architecture's rope type)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of a transformers parameter (None for the rotary buffers)."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"]:
        layer, rest = parts[2], ".".join(parts[3:-1])
        if rest in HF_TO_GGUF:
            return f"blk.{layer}.{HF_TO_GGUF[rest]}.{parts[-1]}"
    return None


def write_synthetic(model: Any, spec: Any, path: Path, about: str = "") -> None:
    """Write `model`'s tensors (a transformers model of `spec`) to `path` as an F16 GGUF."""
    import numpy as np
    from gguf import GGUFWriter

    reason = unsupported_reason(spec)
    if reason:
        raise ValueError(f"cannot write a synthetic GGUF for {spec.name}: {reason}")
    config = spec.hf_config
    arch = ARCHITECTURES[config["model_type"]]
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"qbench synthetic {spec.name}")
    if about:
        writer.add_string("qbench.about", about)
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(spec.hidden_size)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    if spec.head_dim * spec.num_heads != spec.hidden_size:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(spec.vocab_size)
    writer.add_file_type(FTYPES["F16"])
    _add_vocabulary(writer, spec.vocab_size)
    tied = spec.tie_embeddings
    for name, tensor in model.state_dict().items():
        target = gguf_name(name)
        if target is None or (tied and target == "output.weight"):
            continue
        array = tensor.detach().float().cpu().numpy()
        if arch == "llama" and target.endswith((".attn_q.weight", ".attn_q.bias")):
            array = _permute(array, spec.num_heads)
        elif arch == "llama" and target.endswith((".attn_k.weight", ".attn_k.bias")):
            array = _permute(array, spec.num_kv_heads)
        writer.add_tensor(target, array.astype(np.float16 if array.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_vocabulary(writer: Any, size: int) -> None:
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    byte_tokens = [(f"<0x{b:02X}>", 6) for b in range(256)] if size >= len(specials) + 256 else []
    entries = specials + byte_tokens
    entries += [(f"t{i}", 1) for i in range(len(entries), size)]
    entries = entries[:size]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([text for text, _ in entries])
    writer.add_token_scores([0.0] * len(entries))
    writer.add_token_types([kind for _, kind in entries])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def quantize(source: Path, target: Path, type_name: str, threads: int, requantize: bool = False) -> None:
    """llama.cpp's own quantiser (llama_model_quantize, what `llama-quantize` runs): `source` to
    `target` as file type `type_name` (Q4_K_M keeps its mix of types per tensor). It runs in the
    llama.cpp engine's own process (qbench/formats/llamacpp_engine.py), as every llama.cpp call does."""
    import subprocess
    import sys

    engine = Path(__file__).with_name("llamacpp_engine.py")
    command = [sys.executable, str(engine), "quantize", str(source), str(target), str(FTYPES[type_name])]
    done = subprocess.run([*command, str(threads), "1" if requantize else "0"], capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        code = done.returncode
        raise RuntimeError(f"llama.cpp could not quantise {source.name} to {type_name} (exit {code}: {detail})")

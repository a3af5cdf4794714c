"""What both linear runtimes (hf, lean) know of a transformers decoder whose linear layers a backend
swapped: its quantised layers, their reference switch, and the bytes one step reads, by class,
measured from the tensors the model holds (the session checks the linear weights against the
format's formula)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qbench.analysis.floor import StepBytes
from qbench.model.build import decoder_linears, layer_bytes


def quant_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from qbench.quantlinear import QuantLinear

    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]


def set_reference(model: torch.nn.Module, on: bool) -> None:
    for _, module in quant_layers(model):
        module.reference = on


def release_reference(model: torch.nn.Module) -> None:
    for _, module in quant_layers(model):
        module.release_reference()


def _bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def step_bytes(model: torch.nn.Module, ctx: int) -> StepBytes:
    """Bytes one batch-1 step at context `ctx` reads, from the tensors as stored: every decoder
    linear weight (as the kernel reads it) and bias, every norm weight, one embedding row, the whole
    lm_head (the embedding matrix where tied), and the KV cache up to `ctx` in the compute dtype."""
    config = model.config
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    embedding = base.embed_tokens.weight
    biases = 0
    for _, _, _, module in decoder_linears(model):
        bias = module.bias_tensor() if hasattr(module, "bias_tensor") else module.bias
        biases += _bytes(bias)
    norms = sum(
        _bytes(module.weight)
        for name, module in base.named_modules()
        if name.rsplit(".", 1)[-1].endswith("norm") and getattr(module, "weight", None) is not None
    )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return StepBytes(
        linear_weights=layer_bytes(model),
        biases=biases,
        norms=norms,
        embedding_row=embedding.shape[1] * embedding.element_size(),
        lm_head=_bytes(model.get_output_embeddings().weight),
        kv_cache=config.num_hidden_layers * 2 * kv_heads * head_dim * ctx * embedding.element_size(),
    )


def step(runner, token: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One decode position, as both linear runtimes take it: `token` into the fixed-address token
    buffer, the position into its buffer, then the captured graph replayed or `compute()` run."""
    if runner.next_position >= runner.max_cache_len:
        raise RuntimeError(f"cache of {runner.max_cache_len} positions is full")
    runner.token.copy_(token.view(1, 1), non_blocking=True)
    runner.position.fill_(runner.next_position)
    runner.next_position += 1
    if runner.use_graph:
        runner.graph.replay()
        return runner.graph_logits
    return compute()


def capture_graph(runner, compute: Callable[[], torch.Tensor], warmup_steps: int) -> None:
    """Capture `compute()` (one decode step from the runner's fixed-address token and position
    buffers) as a CUDA graph; the runner's `step()` replays it while `use_graph` is set.

    The warm-up steps run on a side stream first, as CUDA graph capture requires (allocator and
    library handles settle; torch.compile compiles there). They advance the cache; callers prefill
    again afterwards."""
    if runner.device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    side = torch.cuda.Stream(runner.device)
    side.wait_stream(torch.cuda.current_stream(runner.device))
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            runner.step(runner.token)
    torch.cuda.current_stream(runner.device).wait_stream(side)
    runner.position.fill_(runner.next_position)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner.graph_logits = compute()
    runner.graph = graph

"""The `hf` runtime: a transformers causal LM (linear layers swapped by the backend) behind the Runner
protocol (qbench.api), one decode position per `step()`.

A static KV cache and fixed-address input buffers make each step the same sequence of kernels with
the same pointers, so the step can be captured once as a CUDA graph and replayed. The attention
mask is computed inside the step from the position buffer (`kv_positions <= position`) and passed
to transformers as a 4-D mask, which keeps transformers' own mask builder, with its host-side checks,
out of the captured region. The same code runs eager, so eager and graph steps do identical work.
"""

from __future__ import annotations

import inspect

import torch

from qbench.runtimes import modules
from qbench.session.positions import CAPTURE_WARMUP_STEPS


class DecoderRunner:
    """Wraps a transformers causal LM with a StaticCache; `step(token)` returns float logits [vocab]."""

    runtime = "hf"
    timer = "cuda-events"  # qbench brackets step() with CUDA events and a synchronised wall clock
    graphs = "qbench"  # qbench captures step() as a CUDA graph (capture_graph / use_graph)

    def __init__(self, model: torch.nn.Module, max_cache_len: int, device: torch.device):
        from transformers import StaticCache

        self.model = model
        self.weights_cache = "off"  # set by the loader: whether the weights came from qbench.model.cache
        self.notes: list[str] = []
        self.device = torch.device(device)
        self.max_cache_len = max_cache_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        # transformers renamed `past_key_values` to `cache` in 5.2x; accept either.
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.kv_positions = torch.arange(max_cache_len, device=self.device)
        self.next_position = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.use_graph = False  # replay the captured graph in step(); set by the decode loop

    @classmethod
    def around(cls, model: torch.nn.Module, options, backend) -> DecoderRunner:
        """The runner a linear-format backend's `load()` hands back (qbench.runtimes.load_runner):
        around `model`, whose linear layers `backend` swapped. A runtime that subclasses this one
        inherits it."""
        return cls(model, options.max_cache_len, options.device)

    def _forward(self, **kwargs) -> torch.Tensor:
        kwargs[self.cache_argument] = self.cache
        return self.model(use_cache=True, **kwargs).logits

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Fill the cache with `tokens` [n] from position 0; returns the last position's logits."""
        length = tokens.numel()
        if length >= self.max_cache_len:
            raise ValueError(f"prefill of {length} tokens does not fit a cache of {self.max_cache_len}")
        self.cache.reset()
        positions = torch.arange(length, device=self.device)[None]
        logits = self._forward(input_ids=tokens.view(1, -1), position_ids=positions, logits_to_keep=1)
        self.next_position = length
        return logits[0, -1].float()

    def _step_from_buffers(self) -> torch.Tensor:
        # A 4-D boolean mask (True = attend) is used as given by every transformers model.
        mask = (self.kv_positions <= self.position[0, 0]).view(1, 1, 1, -1)
        logits = self._forward(input_ids=self.token, position_ids=self.position, attention_mask=mask)
        return logits[0, -1]

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Advance one position with `token` (a 1-element tensor on the device); returns logits."""
        return modules.step(self, token, self._step_from_buffers)

    @torch.inference_mode()
    def capture_graph(self, warmup_steps: int = CAPTURE_WARMUP_STEPS) -> None:
        """Capture one decode step as a CUDA graph (qbench.runtimes.modules.capture_graph)."""
        modules.capture_graph(self, self._step_from_buffers, warmup_steps)

    # ---- the rest of the Runner protocol ---------------------------------------------------------
    def step_bytes(self, ctx: int):
        return modules.step_bytes(self.model, ctx)

    def reference(self, on: bool) -> None:
        """While on, every quantised layer multiplies by its dequantised weight (the plain path)."""
        modules.set_reference(self.model, on)

    def release_reference(self) -> None:
        modules.release_reference(self.model)

    def quant_layers(self):
        return modules.quant_layers(self.model)

    @torch.inference_mode()
    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] of a whole sequence [T] from position 0 (perplexity), without the cache."""
        return self.model(input_ids=ids.view(1, -1)).logits[0]

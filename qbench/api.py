"""All a plugin imports: the Backend base classes, the Runner protocol, the records they hand back,
and what a runtime plugin registers with (README, "Extending qbench"). Two kinds of backend plugin
(README, "Adding a backend"):

  a linear format  subclass `Backend` (or `PackedFormatBackend`), say how one `nn.Linear` becomes a
                   `QuantLinear` and how many bytes it stores; it runs under every linear runtime
                   (`hf`: transformers around the modules; `lean`: qbench's own decoder around them);
  a whole runtime  subclass `Backend`, set `runtimes = ("myengine",)` and override `load()` to return
                   an object that follows `Runner`; qbench times, gates and floors it through the
                   protocol alone.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from qbench.analysis.floor import StepBytes
from qbench.backend import Backend, DeviceInfo, LoadOptions, PackedFormatBackend
from qbench.quantlinear import QuantLinear
from qbench.runtimes import Runtime, register_runtime
from qbench.runtimes.hf import DecoderRunner
from qbench.session.gate import LayerCheck

Timer = Literal["cuda-events", "wall", "runner"]
GraphOwner = Literal["qbench", "runtime", "none"]

__all__ = [
    "Backend",
    "DecoderRunner",
    "DeviceInfo",
    "GraphOwner",
    "LayerCheck",
    "LoadOptions",
    "PackedFormatBackend",
    "QuantLinear",
    "Runner",
    "Runtime",
    "StepBytes",
    "Timer",
    "register_runtime",
]


@runtime_checkable
class Runner(Protocol):
    """What turns weights into a token, one decode position per `step()`. Tensors live on `device`.

    Required:
      runtime    the runtime's name ("hf", "lean", or the engine's own), shown in every table
      timer      "cuda-events": qbench brackets step() with CUDA events and a synchronised wall clock;
                 "wall": step() returns only when the logits are ready (it synchronises), and qbench
                 reads a wall clock around it;
                 "runner": the runner times each step itself, where qbench's clock cannot see it (an
                 engine in its own process): a wall clock around the call that returns the logits,
                 left in `last_step_ms` by step()
      graphs     who captures CUDA graphs: "qbench" (implement `capture_graph()` and honour
                 `use_graph` and `graph`), "runtime" (implement `set_graphs(on)`: the runtime's own
                 switch), or "none" (a graphs block fails with that reason)
      device     torch.device of the logits
      notes      list of one-line facts a table should carry (e.g. "compiled with torch.compile")
      prefill(tokens [n]) -> logits [vocab] of the last position; starts from position 0
      step(token [1]) -> logits [vocab] of the next position
      step_bytes(ctx) -> StepBytes: the bytes one step at `ctx` reads as the runtime stores them, by
                 class (linear weights, biases, norms, one embedding row, lm_head, KV cache)
      reference(on) -> None: while on, prefill/step give the logits the gate compares with (for a
                 quantised format: the same model on a plain path with the dequantised weights)
      release_reference() -> None: free whatever the reference needed, before timing
    Optional:
      quant_layers() -> [(name, QuantLinear)]: checked layer by layer against their dequantised weight
      score(ids [T]) -> logits [T, vocab] from position 0: perplexity on real weights
      weights_cache: str, where the weights came from ("hit", "stored", "off")
      device_memory_mib: float, GPU memory the runtime holds where torch's allocator does not see it
                 (reported instead of torch's peak for a whole runtime)
      kernels_elsewhere: str, why qbench's profiler cannot see the step's kernels (another process)
    """

    runtime: str
    timer: Timer
    graphs: GraphOwner
    device: Any
    notes: list[str]

    def prefill(self, tokens: Any) -> Any: ...

    def step(self, token: Any) -> Any: ...

    def step_bytes(self, ctx: int) -> StepBytes: ...

    def reference(self, on: bool) -> None: ...

    def release_reference(self) -> None: ...


REQUIRED = (
    *("runtime", "timer", "graphs", "device", "notes"),
    *("prefill", "step", "step_bytes", "reference", "release_reference"),
)


def protocol_gaps(runner: Any) -> list[str]:
    """What a runner lacks or gets wrong against the protocol (empty when it follows it)."""
    gaps = [name for name in REQUIRED if not hasattr(runner, name)]
    if hasattr(runner, "timer") and runner.timer not in ("cuda-events", "wall", "runner"):
        gaps.append(f"timer {runner.timer!r} (cuda-events | wall | runner)")
    if getattr(runner, "timer", None) == "runner" and not hasattr(runner, "last_step_ms"):
        gaps.append("last_step_ms (timer runner)")
    if hasattr(runner, "graphs") and runner.graphs not in ("qbench", "runtime", "none"):
        gaps.append(f"graphs {runner.graphs!r} (qbench | runtime | none)")
    return gaps

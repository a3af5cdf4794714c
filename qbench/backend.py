"""What a backend is: a format (how many bytes a linear layer stores), a kernel, and a `load()`.

A backend is a small class registered under the `qbench.backends` entry-point group. It knows its
format and its requirements; it knows nothing of timing, statistics, storage or output. Heavy
imports (bitsandbytes, gptqmodel, ...) happen inside `load()` or the kernel module, never at import.

Two kinds (README, "Adding a backend"):
  a linear format  says how to turn one `nn.Linear` into a quantised module (`quantize_linear`) and
                   inherits `load()`, which builds the transformers model, swaps the decoder's linear
                   layers and hands back a runner of the requested runtime: `hf` (transformers around
                   them) or `lean` (qbench's own decoder around the same modules);
  a whole runtime  overrides `load()` and hands back its own object that follows the Runner protocol
                   (qbench.api), and names its runtime in `runtimes`.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

from qbench import DISTRIBUTION
from qbench.errors import BackendUnavailable


@dataclass(frozen=True)
class DeviceInfo:
    """What a backend's availability depends on. `capability` is None on CPU."""

    kind: str  # "cuda" or "cpu"
    name: str
    capability: tuple[int, int] | None = None
    uuid: str = ""  # the GPU's UUID (empty on CPU): names the device's lock


@dataclass(frozen=True)
class LoadOptions:
    device: str  # "cuda" or "cpu"
    weights: str = "synthetic"  # "synthetic", a checkpoint folder, or a .gguf file
    group_size: int = 128
    seed: int = 0
    max_cache_len: int = 4096
    weights_cache: bool = False  # synthetic 4-bit weights: read from / write to qbench.model.cache
    runtime: str = "hf"  # which runtime a linear format runs under (qbench.runtimes)
    graphs: bool | None = None  # a runtime whose graphs switch is per process: this process's setting
    energy_positions: int = 0  # cache room beyond max_cache_len for the energy window (lean gives it)


class _EveryLinearRuntime:
    """`Backend.runtimes` of a linear format: every linear runtime registered (qbench.runtimes), read
    when asked, so a runtime added later runs every linear format without their changing."""

    def __get__(self, backend: Any, owner: type) -> tuple[str, ...]:
        from qbench.runtimes import linear_runtimes

        return linear_runtimes()


class Backend:
    """Base class for backends. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kernel: ClassVar[str] = ""  # the kernel a batch-1 linear layer runs
    kernel_pattern: ClassVar[str] = ""  # regex that CUDA kernel names of one step must match (profiled)
    compute_dtype: ClassVar[str] = "bfloat16"  # activation dtype
    bits: ClassVar[int] = 16
    requires_cuda: ClassVar[bool] = False
    min_capability: ClassVar[tuple[int, int] | None] = None
    packages: ClassVar[dict[str, str]] = {}  # import name -> pip requirement
    extra: ClassVar[str | None] = None  # `pip install 'qbench-decode[extra]'` brings the packages
    builds_kernel: ClassVar[bool] = False  # needs a CUDA compiler on first run
    cache_format: ClassVar[int] = 1  # bump when what cache_tensors() returns changes (weights cache key)
    # a linear format: every linear runtime (hf, lean, ...); a whole runtime names its own, e.g. ("llamacpp",)
    runtimes: ClassVar[tuple[str, ...]] = _EveryLinearRuntime()  # type: ignore[assignment]
    lean_compile: ClassVar[bool] = False  # the kernel traces under torch.compile, so `lean` compiles its step
    # its package imports torch.compile's modules (torch._dynamo, inductor) at import: the forkserver
    # imports those once for every session (bitsandbytes: 1.5-4.6 s a session otherwise)
    imports_compiler: ClassVar[bool] = False
    family: ClassVar[str] = ""  # backends listed together (`qbench backends`), e.g. "llama.cpp"
    baseline: ClassVar[bool] = False  # its runtime's 16-bit reference: realised x of the others is against it
    # The runtime reads its CUDA-graphs switch once per process (llama.cpp): each graphs setting then
    # runs in its own session process, and the runner learns its setting from LoadOptions.graphs.
    graphs_per_process: ClassVar[bool] = False
    # Its kernels round the activations too (W8A8: each token cast to FP8). On synthetic weights the
    # model's logits then move with any rounding difference (qbench.session.gate, "rounded
    # activations"), so the gate decides on its layers, each also on the model's own activations.
    rounds_activations: ClassVar[bool] = False

    # ---- format -------------------------------------------------------------------------------
    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        """Bytes of one linear layer's weight as stored and read by the kernel (biases excluded)."""
        return in_features * out_features * 2

    def label(self, group_size: int) -> str:
        return self.name if self.bits == 16 else f"{self.name} (g{group_size})"

    # ---- requirements -------------------------------------------------------------------------
    def unavailable_reason(self, device: DeviceInfo) -> str | None:
        """None when this backend can run on `device`, else one line saying why not and the fix."""
        # the device first: advice to install a package cannot help a backend this device cannot run
        if self.requires_cuda and device.kind != "cuda":
            return "needs a CUDA GPU (none detected)"
        if self.min_capability and device.capability and device.capability < self.min_capability:
            need = ".".join(map(str, self.min_capability))
            have = ".".join(map(str, device.capability))
            return f"needs compute capability >= {need}, {device.name} has {have}"
        missing = [req for module, req in self.packages.items() if importlib.util.find_spec(module) is None]
        if missing:
            fix = f"pip install '{DISTRIBUTION}[{self.extra}]'" if self.extra else "pip install " + " ".join(missing)
            return f"missing package {', '.join(missing)}: {fix}"
        if self.builds_kernel and device.kind == "cuda" and shutil.which("nvcc") is None:
            return (
                "first run builds a CUDA kernel and no nvcc is on PATH: "
                "install the CUDA toolkit (nvcc) or set CUDA_HOME"
            )
        return None

    def unsupported_reason(self, spec: Any, weights: str) -> str | None:
        """None when this backend can run `spec` with `weights` ("synthetic", "gguf" or a path), else
        one line saying why not (checked while planning, before any session)."""
        return None

    def check_available(self, device: DeviceInfo) -> None:
        reason = self.unavailable_reason(device)
        if reason:
            raise BackendUnavailable(f"backend {self.name} unavailable: {reason}")

    # ---- loading ------------------------------------------------------------------------------
    def quantize_linear(self, linear: Any, group_size: int) -> Any:
        """Turn one float `nn.Linear` into this backend's module. 16-bit backends return it."""
        return linear

    def from_checkpoint_tensors(self, tensors: dict[str, Any], linear: Any, group_size: int) -> Any:
        """Build the module from a pre-quantised checkpoint's tensors (qweight, qzeros, scales...)."""
        raise NotImplementedError(f"{self.name} does not load pre-quantised checkpoints")

    def cache_tensors(self, module: Any) -> dict[str, Any] | None:
        """The tensors that rebuild `module` through `from_checkpoint_tensors` (what the weights
        cache stores), as the format holds them before any kernel repacks them; None: not cached."""
        return None

    def prepare(self, device: str) -> None:
        """Import the kernel and build it if needed, before any weight is touched."""

    def load_notes(self) -> list[str]:
        """One-line facts from prepare() or loading that the runner's notes should carry."""
        return []

    def finish(self) -> list[str]:
        """After the session's timed blocks (e.g. keep what the kernel tuned for the next session);
        returns notes for the session. Never raises for what it could not keep."""
        return []

    def load(self, spec: Any, options: LoadOptions) -> Any:
        """Build the model with this backend's linear layers; returns the runner of `options.runtime`."""
        from qbench.model.build import build_model, quantize_decoder_linears
        from qbench.runtimes import load_runner

        if options.runtime not in self.runtimes:
            raise ValueError(f"backend {self.name} runs under {', '.join(self.runtimes)}, not {options.runtime}")
        self.prepare(options.device)
        model, packed = build_model(spec, options, dtype=self.compute_dtype)
        cached = "off"
        if options.weights_cache and options.weights == "synthetic" and self.bits < 16:
            from qbench.model.build import quantize_with_cache

            cached = quantize_with_cache(model, self, spec, options)
        else:
            quantize_decoder_linears(model, self, options.group_size, packed)
        runner = load_runner(options.runtime, model, options, self)
        runner.weights_cache = cached
        runner.notes.extend(self.load_notes())
        return runner


class PackedFormatBackend(Backend):
    """A 4-bit backend whose module is built from the tensors a published checkpoint holds
    (qweight, qzeros, scales, ...): from our own quantisation of a float weight, or from a file."""

    def quantize_tensors(self, weight: Any, group_size: int) -> dict[str, Any]:
        raise NotImplementedError

    def make_linear(
        self, tensors: dict[str, Any], in_features: int, out_features: int, bias: Any, group_size: int
    ) -> Any:
        raise NotImplementedError

    def quantize_linear(self, linear: Any, group_size: int) -> Any:
        tensors = self.quantize_tensors(linear.weight.detach(), group_size)
        return self.make_linear(tensors, linear.in_features, linear.out_features, linear.bias, group_size)

    def from_checkpoint_tensors(self, tensors: dict[str, Any], linear: Any, group_size: int) -> Any:
        bias = tensors.pop("bias", None)
        return self.make_linear(tensors, linear.in_features, linear.out_features, bias, group_size)

    def cache_tensors(self, module: Any) -> dict[str, Any]:
        """The checkpoint tensors the module keeps for the gate (before the kernel's repacking)."""
        tensors = dict(module.checkpoint)
        if "bias" not in tensors and getattr(module, "bias", None) is not None:
            tensors["bias"] = module.bias
        return tensors

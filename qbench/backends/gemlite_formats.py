"""FP8, INT8 and 4-bit weights run by gemlite's Triton GEMV kernels (PyPI `gemlite`, pure Python + Triton).

Four backends, one format each; qbench quantises the weight itself (round-to-nearest, the formulas in
`formats.py`) and hands gemlite the quantised tensors through its helper classes:
  fp8-wo        FP8 e4m3 weights, float32 scale per output channel, bf16 activations (A16W8_FP8)
  fp8-dyn       the same weights; each token's activations cast to FP8 e4m3 with their own scale
                inside gemlite's op, FP8 x FP8 products (A8W8_fp8_dynamic)
  int8-wo       INT8 symmetric weights, float32 scale per output channel, bf16 activations (A16W8_INT8)
  gemlite-int4  4-bit asymmetric weights, bf16 scale and zero per group of --group-size inputs (A16Wn)
They live in one module because they share everything but the quantiser, the gemlite helper and the
byte formula (four files would each hold a dozen lines around the same linear class), as the
llama.cpp family shares `llamacpp.py`.

Bytes: the kernel reads W_q (8-bit: one byte a weight; 4-bit: int32 [K/8, N]), the scales and, for
4-bit, the shifts; `stored_tensors()` lists exactly those. gemlite also keeps 60 bytes of metadata on
the device per layer (`metadata` int32 [12], `orig_shape` int32 [2], `meta_scale` float32) that its
kernels never read (their arguments come from Python ints), so neither the floor nor the byte check
counts them (11.8 KB over Qwen2.5-7B's 196 layers). fp8-dyn's per-token activation scales are
computed each call (a few bytes) and not counted either.

gemlite reads the GPU at import (its autotune config for the card, e.g. configs/h100.json), so it is
imported only on a CUDA machine, inside prepare(). Its forward is one `torch.library.custom_op`
(`gemlite::forward_functional`) with a registered fake, so torch.compile keeps it as one opaque op:
`lean` compiles its step around it.

Autotune kept across sessions. gemlite autotunes each new shape (a decode GEMV, the prefill's GEMM at
M = ctx) in the process and keeps the winners in memory only: on the H100 that was some 3 minutes of
every gemlite session (results/h100/formats8). gemlite 0.6 offers `GemLiteLinear.cache_config(file)`
(the winners of this process, merged over what the file held and the configs loaded, as JSON) and
reads such a file's entries into `core.GEMLITE_TRITON_CONFIG_CACHE`, which its kernels' pruners look up
before autotuning (a shape found there runs its one config: no benchmark). qbench keeps one such file
per (gemlite, triton, torch, GPU name) in its kernel cache (`AUTOTUNE_FOLDER`, a marked build folder,
so `qbench cache clear --kernels` removes it): loaded in prepare(), before the first forward; saved
after the session's blocks (`finish()`), merged with what another session saved meanwhile under a
lock, written whole (temp + rename). A missing, damaged or mismatched file is ignored with a note:
the shapes are then autotuned afresh. It holds configs, not binaries: Triton keeps compiled kernels
in its own on-disk cache (TRITON_CACHE_DIR, by default ~/.triton/cache, already kept across
sessions); where that variable is unset a gemlite session points it into the same kernel cache
(`TRITON_FOLDER`), so one folder carries both to another machine of the same software.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from qbench import DISTRIBUTION, formats
from qbench.api import Backend, DeviceInfo, QuantLinear

MIN_GEMLITE = (0, 6)  # the custom op, the pre-quantised helpers and the shipped H100 config
MIN_IN_FEATURES_MULTIPLE = 32  # GemLiteLinearTriton.MIN_SIZE: in_features must be a multiple of it


AUTOTUNE_FOLDER = "gemlite-autotune"  # under qbench's kernel cache (settings.kernel_cache)
TRITON_FOLDER = "triton"  # Triton's compiled kernels, where TRITON_CACHE_DIR is unset
MADE_BY = "qbench"


def autotune_key(gemlite_version: str, triton_version: str, torch_version: str, gpu_name: str) -> dict[str, str]:
    """What a stored autotune file is valid for: a winner measured under other versions or on
    another card is not this one's."""
    return {"gemlite": gemlite_version, "triton": triton_version, "torch": torch_version, "gpu": gpu_name}


def autotune_path(key: dict[str, str]) -> Path:
    """The file for `key` in qbench's kernel cache (the folder is made, with qbench's marker)."""
    from qbench import kernels
    from qbench.model.cache import key_of

    return kernels.build_folder(AUTOTUNE_FOLDER) / f"{key_of(key, 16)}.json"


def _valid_config(config: Any) -> bool:
    """gemlite's layout: matmul type -> shape signature -> kernel kwargs with num_warps, num_stages."""
    if not isinstance(config, dict):
        return False
    for entries in config.values():
        if not isinstance(entries, dict):
            return False
        for kwargs in entries.values():
            if not isinstance(kwargs, dict) or not all(
                isinstance(kwargs.get(name), int) for name in ("num_warps", "num_stages")
            ):
                return False
    return True


def _read_stored(path: Path, key: dict[str, str]) -> tuple[dict | None, str]:
    """(gemlite's config from the file at `path`, '') or (None, why it is not used)."""
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "none stored"
    except (OSError, ValueError) as error:
        return None, f"{path} is damaged ({type(error).__name__}), ignored"
    if not isinstance(stored, dict) or stored.get("made_by") != MADE_BY or not _valid_config(stored.get("config")):
        return None, f"{path} is damaged (not qbench's autotune layout), ignored"
    if stored.get("key") != key:
        return None, f"{path} was made for {stored.get('key')}, not {key}: ignored"
    return stored["config"], ""


def load_autotune(config_cache: dict, path: Path, key: dict[str, str]) -> str:
    """Merge the stored winners into gemlite's `config_cache` (core.GEMLITE_TRITON_CONFIG_CACHE, as
    GemLiteLinear.load_config does without overwrite); returns the session's note."""
    config, why = _read_stored(path, key)
    if config is None:
        return f"gemlite autotune: measured fresh ({why}); saved after the blocks to {path}"
    for matmul_type, entries in config.items():
        config_cache.setdefault(matmul_type, {}).update(entries)
    shapes = sum(len(entries) for entries in config.values())
    return f"gemlite autotune: loaded {shapes} stored configs from {path} (new shapes are autotuned)"


def save_autotune(dump: Callable[[str], None], path: Path, key: dict[str, str]) -> str:
    """Save this process's winners (`dump(file)`: GemLiteLinear.cache_config) over what the file
    holds now, under a lock (two sessions at once each add theirs), written whole (temp + rename);
    returns the session's note. Any failure is the note, never the session's."""
    from qbench.model.cache import write_whole

    own = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.gemlite"
    try:
        # the lock file is opened without following a link (a planted one is an error, the note's)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        with os.fdopen(os.open(path.parent / f".{path.name}.lock", flags, 0o600), "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            earlier, _ = _read_stored(path, key)
            dump(str(own))  # gemlite writes its own layout to a file of ours, then we wrap it
            measured = json.loads(own.read_text())
            if not _valid_config(measured):
                return "gemlite autotune: not saved (gemlite's cache_config wrote an unknown layout)"
            merged = {name: dict(entries) for name, entries in (earlier or {}).items()}
            for name, entries in measured.items():
                merged.setdefault(name, {}).update(entries)
            about = {"made_by": MADE_BY, "key": key, "config": merged}
            write_whole(path, lambda out: out.write_text(json.dumps(about)))
    except Exception as error:  # the cache saves time; it never costs a session
        return f"gemlite autotune: not saved ({type(error).__name__}: {str(error)[:120]})"
    finally:
        own.unlink(missing_ok=True)
    shapes = sum(len(entries) for entries in merged.values())
    return f"gemlite autotune: saved {shapes} configs to {path}"


def _release(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        numbers.append(int(digits))
    return tuple(numbers)


class GemliteRows:
    """Output rows [start, start + size) of a fused gemlite layer (`GemliteFused`), in place of one
    layer's own gemlite layer: the kernel's tensors are views into the fused layer's (nothing held
    twice, and stored_bytes() still counts this layer's rows); called alone (the gate's layer check,
    a prefill) it runs the fused layer and keeps its rows."""

    def __init__(self, fused: Any, start: int, size: int):
        self.fused, self.start, self.size = fused, start, size
        self.W_q = fused.W_q[:, start : start + size]  # gemlite keeps 8-bit W_q as [K, N] (a view of [N, K])
        self.scales = fused.scales[:, start : start + size]  # [1, N]: one scale a row
        self.zeros = fused.zeros  # empty for the 8-bit formats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start : self.start + self.size]


class GemliteFused:
    """lean's one gemlite launch for layers sharing their input (q, k, v; gate, up) in an 8-bit
    format: their quantised rows and per-row scales concatenated into one gemlite layer of the same
    helper (per-row scales: each layer's outputs are exactly its own rows), each layer's kernel
    becoming a `GemliteRows` view. `__call__` takes one row (a decode step), `rows` any number (a
    prefill); both add the layers' biases, as GemliteLinear does after the kernel."""

    any_rows = True
    what = "8-bit linear layers: gemlite's GEMV over concatenated rows"

    def __init__(self, layer: Any, bias: torch.Tensor | None, sizes: list[int]):
        self.layer, self.bias, self.sizes = layer, bias, sizes

    @staticmethod
    def fusable(modules: list) -> bool:
        if not modules or any(not isinstance(m, GemliteLinear) or m.format != "channel" for m in modules):
            return False
        first = modules[0]
        same = all(m.helper == first.helper and m.in_features == first.in_features for m in modules)
        return bool(first.helper) and same and len({m.bias is None for m in modules}) == 1

    @classmethod
    def fuse(cls, modules: list, sms: int) -> GemliteFused:
        import gemlite.helper

        with torch.no_grad():
            q = torch.cat([m.gemlite.W_q.t() for m in modules])  # [N, K], the kernels' own values
            scales = torch.cat([m.gemlite.scales.t() for m in modules])  # [N, 1]
            helper = getattr(gemlite.helper, modules[0].helper)(device=q.device, dtype=torch.bfloat16)
            layer = helper.from_weights(q, bias=None, scales=scales)
            del q, scales
            start = 0
            for module in modules:
                rows = slice(start, start + module.out_features)
                del module.gemlite  # a child nn.Module: a plain object cannot take its place otherwise
                module.gemlite = GemliteRows(layer, start, module.out_features)
                if module.checkpoint is not None:  # the gate's copy: the fused rows' views (the same values),
                    # so the layer's own storage (which it shared) goes now, not when the gate ends
                    module.checkpoint = {"q": layer.W_q.t()[rows], "scales": layer.scales.t()[rows]}
                start += module.out_features
            bias = None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])
        return cls(layer, bias, [m.out_features for m in modules])

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out if self.bias is None else out + self.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(x.reshape(1, -1)).reshape(-1)


class GemliteLinear(QuantLinear):
    """One gemlite layer. `checkpoint` keeps the format's own tensors (what `formats.py` produced:
    the gate's reference dequantises them, not gemlite's copy) until the gate ends; the bias stays
    here and is added after the kernel, as the reference adds it."""

    def __init__(self, layer: Any, checkpoint: dict[str, torch.Tensor], in_features, out_features, bias, group_size):
        super().__init__(in_features, out_features, bias, group_size)
        self.gemlite = layer
        self.checkpoint = checkpoint
        self.format = ""  # "channel" (8-bit) or "int4"
        self.dynamic_activations = False  # fp8-dyn: the kernel quantises each token to FP8
        self.helper = ""  # the gemlite.helper class that built the layer (lean's fusion builds another)

    lean_fuser: ClassVar[type] = GemliteFused  # lean fuses q, k, v (and gate, up) of these into one launch

    def stored_tensors(self) -> list[torch.Tensor]:
        tensors = [self.gemlite.W_q, self.gemlite.scales, self.gemlite.zeros]
        return [t for t in tensors if t.numel()]  # 8-bit formats have no zeros: gemlite keeps an empty one

    def dequantize(self) -> torch.Tensor:
        held = self.checkpoint
        if self.format == "int4":
            q = formats.unpack_nibbles(held["nibbles"])
            return formats.gemlite_int4_dequantize(q, held["scales"], held["zeros"], self.group_size)
        return formats.channel_dequantize(held["q"], held["scales"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:  # the same numbers on the plain path; fp8-dyn's tokens rounded as its kernel does
            inputs = formats.fp8_per_token(x).to(x.dtype) if self.dynamic_activations else x
            return F.linear(inputs, self.dequantize().to(x.dtype), self.bias)
        return self.kernel_forward(x)

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gemlite(x)
        return out if self.bias is None else out + self.bias


class GemliteBackend(Backend):
    """What the four share. Subclasses set the format and `_gemlite_layer`."""

    compute_dtype = "bfloat16"
    requires_cuda = True
    min_capability: ClassVar[tuple[int, int] | None] = (8, 0)  # bf16 Triton kernels
    packages = {"gemlite": "gemlite"}
    extra = "gemlite"
    family = "gemlite"
    # gemlite's forward is a torch.library custom op with a fake: torch.compile keeps it opaque
    # (an FP8 plugin through the same op ran compiled with graphs on the H100: RESEARCH.md)
    lean_compile = True
    imports_compiler = True  # gemlite applies torch.compile to its torch fallbacks at import (quant_utils)
    imported_version: ClassVar[str] = ""
    loaded_notes: ClassVar[list[str]] = []

    def label(self, group_size: int) -> str:
        return self.name if self.bits == 8 else f"{self.name} (g{group_size})"

    def unavailable_reason(self, device: DeviceInfo) -> str | None:
        """The machine first (no package fixes a CPU or an old GPU), then the package; never imports it."""
        if device.kind != "cuda":
            return "needs a CUDA GPU (none detected)"
        if self.min_capability and device.capability and device.capability < self.min_capability:
            need = ".".join(map(str, self.min_capability))
            have = ".".join(map(str, device.capability))
            why = " (FP8 tensor types: Ada or Hopper)" if self.min_capability >= (8, 9) else ""
            return f"needs compute capability >= {need}{why}, {device.name} has {have}"
        fix = f"pip install '{DISTRIBUTION}[{self.extra}]'"
        if importlib.util.find_spec("gemlite") is None:
            return f"missing package gemlite: {fix}"
        try:
            version = importlib.metadata.version("gemlite")
        except importlib.metadata.PackageNotFoundError:
            version = "0"
        if _release(version) < MIN_GEMLITE:
            need = ".".join(map(str, MIN_GEMLITE))
            return f"gemlite {version} is installed, {self.name} needs >= {need}: pip install -U 'gemlite>={need}'"
        return None

    def unsupported_reason(self, spec: Any, weights: str) -> str | None:
        misfit = sorted({k for _, k, _, _ in spec.linear_shapes() if k % MIN_IN_FEATURES_MULTIPLE})
        if misfit:
            need = MIN_IN_FEATURES_MULTIPLE
            return f"gemlite needs in_features that are multiples of {need}; {spec.name} has {misfit}"
        return None

    def prepare(self, device: str) -> None:
        if device != "cuda" or GemliteBackend.imported_version:
            return
        import gemlite
        from gemlite import core

        GemliteBackend.imported_version = gemlite.__version__
        config = core.selected_tag  # the autotune config gemlite loaded for this card, if any
        shipped = config.rsplit("/", 1)[-1] if config else "none for this card (autotunes on first use)"
        GemliteBackend.loaded_notes = [f"gemlite {gemlite.__version__}, autotune config {shipped}"]
        try:
            key = self._autotune_key()
            GemliteBackend.autotune_file = autotune_path(key)
            if not os.environ.get("TRITON_CACHE_DIR"):  # Triton reads it when it next compiles
                from qbench import kernels

                os.environ["TRITON_CACHE_DIR"] = str(kernels.build_folder(TRITON_FOLDER))
                GemliteBackend.loaded_notes.append(f"Triton's compiled kernels: {os.environ['TRITON_CACHE_DIR']}")
            note = load_autotune(core.GEMLITE_TRITON_CONFIG_CACHE, GemliteBackend.autotune_file, key)
        except Exception as error:  # no cache folder (read-only home, bad variable): autotune afresh
            GemliteBackend.autotune_file = None
            note = f"gemlite autotune: measured fresh (no stored file: {type(error).__name__}: {str(error)[:120]})"
        GemliteBackend.loaded_notes.append(note)

    autotune_file: ClassVar[Path | None] = None

    def _autotune_key(self) -> dict[str, str]:
        import triton

        gpu = torch.cuda.get_device_name()
        return autotune_key(GemliteBackend.imported_version, triton.__version__, torch.__version__, gpu)

    def finish(self) -> list[str]:
        """After the session's blocks: this process's autotune winners saved for the next session."""
        if GemliteBackend.autotune_file is None:
            return []
        from gemlite.core import GemLiteLinear

        return [save_autotune(GemLiteLinear.cache_config, GemliteBackend.autotune_file, self._autotune_key())]

    def load_notes(self) -> list[str]:
        return list(GemliteBackend.loaded_notes)

    def quantize_linear(self, linear: torch.nn.Linear, group_size: int) -> GemliteLinear:
        self.prepare(linear.weight.device.type)
        weight = linear.weight.detach()
        layer, checkpoint = self._gemlite_layer(weight, group_size)
        module = GemliteLinear(layer, checkpoint, linear.in_features, linear.out_features, linear.bias, group_size)
        module.format = "int4" if self.bits == 4 else "channel"
        module.dynamic_activations = self.name == "fp8-dyn"
        module.helper = getattr(self, "helper", "")
        return module

    def _gemlite_layer(self, weight: torch.Tensor, group_size: int) -> tuple[Any, dict[str, torch.Tensor]]:
        raise NotImplementedError


class Channel8Backend(GemliteBackend):
    """8 bits a weight and one float32 scale per output row: the three 8-bit formats differ only in
    qbench's quantiser and the gemlite helper class that takes its tensors."""

    bits = 8
    helper = ""  # the class of gemlite.helper that builds the layer
    quantize = staticmethod(formats.fp8_quantize)

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.channel8_bytes(in_features, out_features)

    def _gemlite_layer(self, weight, group_size):
        import gemlite.helper

        q, scales = self.quantize(weight)
        helper = getattr(gemlite.helper, self.helper)(device=weight.device, dtype=torch.bfloat16)
        return helper.from_weights(q, bias=None, scales=scales), {"q": q, "scales": scales}


class Fp8WeightOnlyBackend(Channel8Backend):
    name = "fp8-wo"
    description = "FP8 e4m3 weights, per-channel float32 scales, bf16 activations (gemlite A16W8_FP8)"
    kernel = "gemlite Triton gemv_INT_splitK_kernel (A16W8 FP8) at batch 1"
    kernel_pattern = "gemv_INT_splitK_kernel"
    min_capability = (8, 9)
    helper = "A16W8_FP8"


class Fp8DynamicBackend(Channel8Backend):
    name = "fp8-dyn"
    description = "FP8 e4m3 weights, per-channel scales, activations cast to FP8 per token (gemlite A8W8)"
    kernel = "gemlite Triton scale_activations_per_token + gemv_INT_splitK_kernel (A8W8 FP8 dynamic)"
    kernel_pattern = "gemv_INT_splitK_kernel"
    min_capability = (8, 9)
    helper = "A8W8_fp8_dynamic"
    rounds_activations = True


class Int8WeightOnlyBackend(Channel8Backend):
    name = "int8-wo"
    description = "INT8 symmetric weights, per-channel float32 scales, bf16 activations (gemlite A16W8_INT8)"
    kernel = "gemlite Triton gemv_INT_splitK_kernel (A16W8 INT8) at batch 1"
    kernel_pattern = "gemv_INT_splitK_kernel"
    helper = "A16W8_INT8"
    quantize = staticmethod(formats.int8_quantize)


class GemliteInt4Backend(GemliteBackend):
    """gemlite's 4-bit GEMV splits K and adds each split's partial sums atomically into the output.
    With a bf16 output on sm_90 gemlite's default adds them in bf16 (`set_native_atomic_bfp16`, on),
    so every addition rounds to 8 mantissa bits: on the H100 the layer with K = 18,944 (down_proj,
    148 groups) was 4.2% off its own dequantised weight in every session (results/h100/evidence23),
    over the gate's 2%. qbench turns that off for this backend's sessions: the partial sums go into a
    float32 output that gemlite casts to bf16 after the kernel (one more small kernel a linear, part
    of the measured step; the session's notes say so). Only the 4-bit GEMV and the split-K GEMM read
    the switch; gemlite's 8-bit GEMV always adds into its output dtype, so fp8-wo, int8-wo and
    fp8-dyn are unchanged (and each session is a process of its own: the switch never leaks)."""

    name = "gemlite-int4"
    description = "4-bit asymmetric weights, bf16 scale and zero per group, bf16 activations (gemlite A16W4)"
    kernel = "gemlite Triton gemv_INT_revsplitK_kernel (A16W4, float32 split-K sums) at batch 1"
    kernel_pattern = "gemv_INT_revsplitK_kernel"
    bits = 4
    FLOAT32_SUMS_NOTE = (
        "gemlite: split-K partial sums added in float32, then cast to bf16 (set_native_atomic_bfp16(False); "
        "gemlite's default adds them in bf16)"
    )

    def prepare(self, device: str) -> None:
        super().prepare(device)
        if device != "cuda":
            return
        from gemlite import core

        core.set_native_atomic_bfp16(False)
        if self.FLOAT32_SUMS_NOTE not in GemliteBackend.loaded_notes:
            GemliteBackend.loaded_notes.append(self.FLOAT32_SUMS_NOTE)

    def linear_bytes(self, in_features: int, out_features: int, group_size: int) -> int:
        return formats.gemlite_int4_bytes(in_features, out_features, group_size)

    def _gemlite_layer(self, weight, group_size):
        from gemlite.helper import A16Wn

        q, scales, zeros = formats.gemlite_int4_quantize(weight, group_size)
        helper = A16Wn(device=weight.device, dtype=torch.bfloat16)
        layer = helper.from_weights(q, scales, zeros, W_nbits=4, group_size=group_size, bias=None)
        return layer, {"nibbles": formats.pack_nibbles(q), "scales": scales, "zeros": zeros}

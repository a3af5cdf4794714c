"""`lean`: qbench's own static-cache decoder, in the spirit of gpt-fast: what a kernel can do when the
runtime around it costs little.

It runs the very model object the `hf` runtime builds, so the weights, the backend's quantised
linear modules, the embedding, the RMSNorm and MLP modules are used unchanged; what it replaces is
the loop around them:
  - a static KV cache [layers, kv heads, positions, head dim] written in place at a position held
    in a device tensor, so every step is the same kernels on the same pointers (a CUDA graph
    captures it);
  - grouped-query attention for the one new position, K and V read once and never expanded to the
    query heads (transformers' SDPA path copies them, `repeat_kv`, whenever a mask is passed, which
    a static cache needs). On CUDA with Triton: qbench's split-K decode kernel
    (`decode_attention.py`, flash-decoding: one program per kv head and chunk of positions). Else,
    or with QBENCH_LEAN_ATTENTION=sdpa, SDPA with each kv head's group of query heads in the
    query-length place: correct everywhere, but on the H100 the fused kernel SDPA picks gets one
    block per kv head and took many times the cache's read time at 7B, ctx 2048
    (results/h100/runtimes/README.md holds the figure). The runner's
    notes say which ran. With the split-K kernel its first launch also rotates q and k and writes
    the position's K and V into the cache (`decode_attention_rope`: the step's rope kernels and the
    cache write are two or three launches a layer; QBENCH_LEAN_ROPE=step keeps them in the step);
  - with QBENCH_LEAN_PDL=on (Hopper and later), lean's own kernels as programmatic dependent launches:
    each starts while the kernel before it finishes and asks L2 for its first weights or cached rows
    (`kernels/overlap.py`); off by default until measured;
  - rotary cos/sin tables computed once by the model's own rotary module (so Llama 3.1's rope
    scaling and any attention scaling are the model's own);
  - no cache object, mask builder or output records: a step is its tensors and nothing else.
Where the backend's kernel compiles (`Backend.lean_compile`) the step also goes through
torch.compile (the fusions of norms, rotary and residuals); qbench still captures the CUDA graph.
If compiling fails the runner says so and steps uncompiled. Sliding-window attention is not
implemented: a model that would use it within the cache is refused, not approximated.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from qbench import settings
from qbench.errors import BackendUnavailable
from qbench.runtimes import modules
from qbench.runtimes.joined import join_rows
from qbench.runtimes.kernels import decode_attention, elementwise, gemv, overlap
from qbench.session.positions import CAPTURE_WARMUP_STEPS


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


@torch.library.custom_op("qbench::write_kv", mutates_args=("kv_cache",))
def write_kv(kv_cache: torch.Tensor, layer: int, position: torch.Tensor, kv: torch.Tensor) -> None:
    """kv_cache[layer, :, :, position] = kv ([2, kv heads, 1, head_dim]), in place, one launch. An
    opaque op because torch.compile, given the in-place index_copy_ into a slice of the cache, wrote
    whole cache tensors back in every step, a large share of the step at 7B on the H100
    (results/h100/lean-gemv/README.md: the `triton_poi_fused_copy_` kernels of lean-triton-kernels.md)."""
    kv_cache[layer].index_copy_(2, position, kv)


@write_kv.register_fake
def _(kv_cache, layer, position, kv):
    return None


class Gemv:
    """One GEMV launch over the concatenated weight of `modules` (plain 16-bit nn.Linear sharing
    their input); each module's weight and bias become views into the concatenation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int], sms: int, pdl: bool = False):
        self.weight, self.bias, self.sizes, self.pdl = weight, bias, sizes, pdl
        self.blocks = gemv.choose_blocks(weight.shape[0], weight.shape[1], sms, weight.device.type != "cuda")

    @staticmethod
    def fusable(modules: list) -> bool:
        if not modules or any(type(m) is not torch.nn.Linear for m in modules):
            return False
        first = modules[0].weight
        return (
            first.dtype in (torch.bfloat16, torch.float16)
            and all(m.weight.dtype == first.dtype and m.in_features == modules[0].in_features for m in modules)
            and len({m.bias is None for m in modules}) == 1
        )

    folds = True  # takes QBENCH_LEAN_FOLD's arguments (`gemv.gemv`)

    @classmethod
    def fuse(cls, modules: list, sms: int, pdl: bool = False, interleave: bool = False) -> Gemv:
        """`interleave` (the fold's gate and up): the rows of the two modules alternate, so each
        program holds whole (gate, up) pairs and the GEMV returns their SiLU product."""
        with torch.no_grad():
            weight, weights = join_rows([m.weight.detach() for m in modules], interleave)
            bias, biases = (None, [None] * len(modules)) if modules[0].bias is None else join_rows(
                [m.bias.detach() for m in modules], interleave)
            for module, w, b in zip(modules, weights, biases, strict=True):
                module.weight = torch.nn.Parameter(w, requires_grad=False)
                if b is not None:
                    module.bias = torch.nn.Parameter(b, requires_grad=False)
        return cls(weight, bias, [m.out_features for m in modules], sms, pdl)

    def __call__(
        self, x: torch.Tensor, rms: torch.Tensor | None = None, eps: float = 0.0,
        residual: torch.Tensor | None = None, scale_out: torch.Tensor | None = None, silu: bool = False,
    ) -> torch.Tensor:
        """W x (+ b), and QBENCH_LEAN_FOLD's forms (`gemv.gemv`): an RMSNorm's scale of h (`rms`), the
        SiLU product of interleaved (gate, up) rows, residual + W x and, after it, that times the next
        norm's weight (`scale_out`: [2N] returned)."""
        return gemv.gemv(x.reshape(-1), self.weight, self.bias, *self.blocks, self.pdl, rms, eps, residual, scale_out,
                         silu)


class LeanRunner:
    runtime = "lean"
    timer = "cuda-events"
    graphs = "qbench"

    # the captured step reads its position from a device buffer (`position`), so graph replays at
    # advancing positions each write their own slot: decode.energy_window may replay it
    replays_at_positions = True

    @classmethod
    def around(cls, model: torch.nn.Module, options, backend) -> LeanRunner:
        """The runner a linear-format backend's `load()` hands back (qbench.runtimes.load_runner)."""
        return cls(
            model, options.max_cache_len, options.device, compile_step=backend.lean_compile,
            energy_positions=options.energy_positions,
        )

    def __init__(
        self,
        model: torch.nn.Module,
        max_cache_len: int,
        device: str,
        compile_step: bool = False,
        energy_positions: int = 0,
    ):
        """`compile_step`: the backend's kernel traces under torch.compile (`Backend.lean_compile`);
        the step is compiled on CUDA only. `energy_positions`: cache room beyond `max_cache_len` for
        the energy window after each block's timed steps (qbench.session.decode.energy_window), allocated
        only where the split-K attention runs: it reads up to the position and its chunks are sized
        for `max_cache_len`, so the room adds only idle programs to a timed step (SDPA reads the whole
        cache: no room there)."""
        config = model.config
        window = _sliding_window(config)
        if window is not None and window < max_cache_len:
            raise RuntimeError(
                f"lean does not implement sliding-window attention (window {window} < {max_cache_len} positions)"
            )
        self.model = model
        self.device = torch.device(device)
        self.max_cache_len = max_cache_len
        self.planned_positions = max_cache_len  # the block's positions: what the attention's chunks are sized for
        self.weights_cache = "off"
        self.notes: list[str] = []
        base = model.get_decoder()
        self.embed, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.lm_head = model.get_output_embeddings()
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        dtype = self.embed.weight.dtype
        self.split_programs = self._choose_attention()
        self.energy_room = self._energy_room(energy_positions, window, dtype)
        self.max_cache_len = max_cache_len + self.energy_room
        # K and V of a layer side by side, [layers, 2, kv heads, positions, head_dim], so one launch
        # writes both (`write_kv`); k_cache and v_cache are views of it
        shape = (len(self.layers), 2, self.kv_heads, self.max_cache_len, self.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.k_cache, self.v_cache = self.kv_cache[:, 0], self.kv_cache[:, 1]
        self.kv_positions = torch.arange(self.max_cache_len, device=self.device)
        with torch.inference_mode():
            probe = torch.zeros(1, dtype=dtype, device=self.device)
            cos, sin = base.rotary_emb(probe, self.kv_positions[None])
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # [positions, head_dim]
        self.rope_in_attention = self._choose_rope()
        self.pdl = self._choose_pdl()
        self.attention_fused = self._choose_combine()
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.next_position = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.use_graph = False
        self._hf = None  # the hf runner that gives the gate's reference (same model, plain path)
        self._reference = False
        self.gemv_on = self._use_triton("QBENCH_LEAN_GEMV", "triton", "cublas", "16-bit linear layers", "F.linear",
                                        "the Triton GEMV runs on CUDA")
        self.fold = self._choose_fold()
        self.linear16 = self._plan_gemv()
        self.fold_squares = self.fold and self._choose_squares()
        # folded, no norm, add or product is left for lean's own small kernels
        self.own_elementwise = not self.fold and self._choose_elementwise()
        self._uncompiled = self._decode_folded if self.fold else self._decode  # the step's Python
        self._choose_compile(compile_step)  # sets _step_fn

    def _choose_compile(self, compile_step: bool) -> None:
        """QBENCH_LEAN_COMPILE: 1 (default: where the backend declares lean_compile), 0 (never), all
        (also where it does not: to try a kernel; a failure is said and the step runs uncompiled). Every
        compile goes through `compile_keyed`, which registers qbench's ops with inductor first: the folded
        qbench-int4 step, whose compile did not return on an H100 before that, compiles like any other
        (results/h100/step6/, step7/)."""
        setting = os.environ.get("QBENCH_LEAN_COMPILE", "1")
        if setting not in ("0", "1", "all"):
            raise ValueError(f"QBENCH_LEAN_COMPILE must be 0, 1 or all, got {setting!r}")
        self._step_fn = self._uncompiled
        if self.device.type != "cuda":
            self.notes.append("lean: step not compiled: torch.compile is used on CUDA only")
        elif setting == "0":
            self.notes.append("lean: torch.compile off (QBENCH_LEAN_COMPILE=0)")
        elif not compile_step and setting != "all":
            self.notes.append(
                "lean: step not compiled: the backend's kernel is not declared to trace under torch.compile "
                "(lean_compile)"
            )
        else:
            self._step_fn = compile_keyed(self._uncompiled)
            self.notes.append(
                "lean: step compiled with torch.compile"
                + ("" if compile_step else " (QBENCH_LEAN_COMPILE=all: the backend does not declare lean_compile)")
            )

    def _sms(self) -> int:
        return torch.cuda.get_device_properties(self.device).multi_processor_count if self.device.type == "cuda" else 8

    def _use_triton(self, variable: str, triton: str, other: str, what: str, other_name: str, on_cuda: str) -> bool:
        """Whether one of lean's Triton paths runs. `variable` is auto (on CUDA where Triton loads),
        `other` (the torch path), or `triton` (also on the CPU under TRITON_INTERPRET=1, for tests);
        where the torch path runs, the notes say "lean: {what}: {other_name} (why)"."""
        choice = os.environ.get(variable, "auto")
        if choice not in ("auto", other, triton):
            raise ValueError(f"{variable} must be auto, {other} or {triton}, got {choice!r}")
        reason = decode_attention.available()
        if choice == other or (choice == "auto" and (self.device.type != "cuda" or reason)):
            why = f"{variable}={other}" if choice == other else reason or on_cuda
            self.notes.append(f"lean: {what}: {other_name} ({why})")
            return False
        if reason:
            raise RuntimeError(f"{variable}={triton}, but {reason}")
        return True

    def _choose_attention(self) -> int:
        """How many (kv head, chunk) programs the split-K decode attention launches, 0 for SDPA; the
        choice goes into the notes. QBENCH_LEAN_ATTENTION: auto (split-K on CUDA where Triton loads),
        sdpa, or split-k (also on the CPU under TRITON_INTERPRET=1, for tests)."""
        if not self._use_triton("QBENCH_LEAN_ATTENTION", "split-k", "sdpa", "decode attention", "SDPA",
                                "the split-K kernel runs on CUDA"):
            return 0
        sms = self._sms()
        programs = 2 * sms  # two programs per SM: enough chunks in flight to read the cache at full rate
        chunk, splits = decode_attention.plan_splits(self.max_cache_len, self.kv_heads, programs)
        self.notes.append(
            f"lean: decode attention: qbench's split-K Triton kernel ({self.kv_heads} kv heads x {splits} "
            f"chunks of {chunk} positions)"
        )
        return programs

    def _choose_combine(self) -> bool:
        """Whether the split-K attention's chunks are combined in its one launch, by each kv head's last
        chunk to finish (QBENCH_LEAN_COMBINE=fused), or by a second kernel (kernel, the default). Said in
        the notes where it is fused, or asked for and not run (SDPA; programmatic dependent launches)."""
        if not _switched_on("QBENCH_LEAN_COMBINE"):
            return False
        where = "lean: decode attention's combine"
        if not self.split_programs:
            self.notes.append(f"{where}: not used (QBENCH_LEAN_COMBINE=fused needs the split-K attention)")
            return False
        if self.pdl:
            self.notes.append(f"{where}: a second kernel (the fused combine is not built for QBENCH_LEAN_PDL=on)")
            return False
        self.notes.append(f"{where}: in its one launch, by each kv head's last chunk (QBENCH_LEAN_COMBINE=fused)")
        return True

    def _choose_rope(self) -> bool:
        """Whether the split-K attention's first kernel rotates q and k and writes k and v into the
        cache (`decode_attention_rope`: two launches a layer fewer than the step's rope and write);
        QBENCH_LEAN_ROPE: auto (where the split-K attention runs) or step. Said in the notes."""
        choice = os.environ.get("QBENCH_LEAN_ROPE", "auto")
        if choice not in ("auto", "step"):
            raise ValueError(f"QBENCH_LEAN_ROPE must be auto or step, got {choice!r}")
        if not self.split_programs:
            return False
        where = "lean: rotary embedding and the K/V cache write"
        if choice == "step":
            self.notes.append(f"{where}: in the step (QBENCH_LEAN_ROPE=step)")
            return False
        if self.cos.shape[-1] != self.head_dim:  # a partial rotary: the kernel rotates whole heads
            self.notes.append(f"{where}: in the step (rotary tables of {self.cos.shape[-1]} of {self.head_dim} dims)")
            return False
        self.notes.append(f"{where}: inside the split-K attention's first kernel")
        return True

    def _choose_pdl(self) -> bool:
        """Whether lean's own kernels (the GEMVs, qbench-int4's, the split-K attention) are programmatic
        dependent launches (kernels/overlap.py: each starts while the one before finishes).
        QBENCH_LEAN_PDL: off (the default until measured) or on (CUDA, compute capability 9 or more;
        elsewhere the notes say why not). Said in the notes when asked for."""
        if not _switched_on("QBENCH_LEAN_PDL"):
            return False
        where = "lean: programmatic dependent launch (QBENCH_LEAN_PDL=on)"
        if self.device.type != "cuda" or torch.cuda.get_device_capability(self.device) < (9, 0):
            self.notes.append(f"{where}: not used (it needs a CUDA GPU of compute capability 9.0 or more)")
            return False
        if (why := overlap.unavailable()) is not None:
            self.notes.append(f"{where}: not used ({why})")
            return False
        self.notes.append(f"{where}: qbench's kernels start while the kernel before them finishes")
        return True

    def _choose_elementwise(self) -> bool:
        """With PDL, whether the norms, residual adds and SiLU product are lean's own kernels too
        (`kernels/elementwise.py`), so that no kernel launched as usual breaks the chain: where every
        norm is the RMSNorm they compute and the MLP's activation is SiLU. Said in the notes."""
        if not self.pdl:
            return False
        where = "lean: norms, residual adds and the SiLU product"
        if not self._rmsnorms_and_silu():
            self.notes.append(f"{where}: torch's (not Llama's RMSNorm and SiLU: lean's own kernels do not apply)")
            return False
        self.notes.append(f"{where}: lean's own kernels (add_rmsnorm, silu_mul), launched as the GEMVs are")
        return True

    def _rmsnorms_and_silu(self) -> bool:
        """Every norm Llama's (or Qwen2's) RMSNorm and every MLP's activation SiLU: what lean's own
        norm and SiLU kernels, and the fold into the GEMV, compute."""
        norms = [self.norm]
        for layer in self.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        silu = all(_is_silu(getattr(layer.mlp, "act_fn", None)) for layer in self.layers)
        return silu and all(elementwise.own_norm(n) for n in norms)

    def _choose_fold(self) -> bool:
        """Whether the norms, residual adds and SiLU products go inside lean's own GEMVs (`gemv.gemv`'s
        fold; qbench-int4's GEMV takes the same): each norm's scale into the GEMV that reads its output
        (q/k/v, gate/up, lm_head), each residual add and the next norm's weight into the GEMV whose
        output it adds (o, down), the SiLU product into gate/up's (rows interleaved); a step is then
        its GEMVs and the attention. QBENCH_LEAN_FOLD: off (the default until measured) or on, where
        every layer's linears go through a GEMV that folds (lean's 16-bit one, or a backend's fuser
        that declares `folds`: qbench-int4's), its norms Llama's RMSNorm and its activation SiLU;
        elsewhere the notes say why not."""
        if not _switched_on("QBENCH_LEAN_FOLD"):
            return False
        where = "lean: norms, residual adds and the SiLU product (QBENCH_LEAN_FOLD=on)"
        folding = self.gemv_on and _folds([self.lm_head]) and all(
            _folds(modules) for layer in self.layers for modules in _linears(layer)
        )
        if not folding:
            self.notes.append(f"{where}: not folded (the linear layers are not all lean's own GEMVs that fold: "
                              f"16-bit, or qbench-int4's)")
            return False
        if not self._rmsnorms_and_silu():
            self.notes.append(f"{where}: not folded (not Llama's RMSNorm and SiLU)")
            return False
        self.notes.append(f"{where}: folded into the GEMVs' loads and stores (one launch fewer for each)")
        return True

    def _choose_squares(self) -> bool:
        """Folded, whether o and down hand the GEMV after them h's sums of squares (one float a row
        block, stored beside h) so that q/k/v and gate/up sum those instead of reading all of h for
        its RMS scale: where every layer's launches declare `squares` (qbench-int4's). Layer 0's
        q/k/v (after the embedding) and lm_head still read h."""
        # each launch's first module: q/k/v's, o's, gate/up's, down's
        launches = [self.linear16.get(id(modules[0])) for layer in self.layers for modules in _linears(layer)]
        if not all(getattr(launch, "squares", False) for launch in launches):
            return False
        self.notes.append("lean: the folded RMS scales of q/k/v and gate/up from the sums of squares o and down "
                          "store beside h (layer 0's q/k/v and lm_head read h)")
        return True

    def _energy_room(self, wanted: int, window: int | None, dtype: torch.dtype) -> int:
        """Cache positions beyond the block's for the energy window, and the memory they cost said."""
        if not wanted:
            return 0
        if not self.split_programs:
            self.notes.append(
                "lean: no cache room for an energy window (SDPA attention reads the whole cache: room would "
                "lengthen every timed step)"
            )
            return 0
        if window is not None and window < self.max_cache_len + wanted:
            self.notes.append(f"lean: no cache room for an energy window (sliding window {window})")
            return 0
        per_position = len(self.layers) * 2 * self.kv_heads * self.head_dim * torch.empty(0, dtype=dtype).element_size()
        self.notes.append(
            f"lean: {wanted} cache positions beyond the block for the energy window "
            f"({wanted * per_position / 2**20:.1f} MiB of KV cache; the timed steps' attention chunks are "
            f"sized for their {self.max_cache_len} positions)"
        )
        return wanted

    def _plan_gemv(self) -> dict[int, Gemv]:
        """Where qbench's Triton GEMV (`gemv.py`) replaces F.linear in a step: every plain 16-bit
        nn.Linear (the bf16 backend's layers; every backend's lm_head), with q, k and v of a layer as
        one launch over their concatenated weight and gate and up as another. The concatenated
        weight is the storage: the layers' own weights become views into it, so nothing is held
        twice and the `hf` runtime reads the same tensors. QBENCH_LEAN_GEMV: auto (on CUDA where
        Triton loads), cublas (F.linear everywhere), or triton (also on the CPU under
        TRITON_INTERPRET=1, for tests). Keyed by id() of the module the step would have called."""
        if not self.gemv_on:
            return {}
        sms = self._sms()
        plan: dict[int, Any] = {}
        fused = 0
        quantised: dict[str, int] = {}  # a quantised module's own fuser (`lean_fuser`): its note -> launches

        def fuse_quantised(modules: list, interleave: bool = False) -> Any:
            """One launch by the modules' own fuser (qbench-int4's GEMV, gemlite's 8-bit layers) of two or
            more layers, or None (a layer alone goes through its module, which makes the same call; with
            the fold, through the fuser, whose launch takes the fold's arguments)."""
            fuser = getattr(type(modules[0]), "lean_fuser", None)
            if fuser is None or (len(modules) == 1 and not self.fold) or not fuser.fusable(modules):
                return None
            if self.pdl and getattr(fuser, "overlaps", False):
                raise BackendUnavailable(
                    f"QBENCH_LEAN_PDL=on with lean's {fuser.what}: not run, since on an H100 its timed block "
                    f"did not finish (results/h100/step3/README.md); the cause is not found",
                    "run it with QBENCH_LEAN_PDL=off (the default)",
                )
            quantised[fuser.what] = quantised.get(fuser.what, 0) + 1
            return fuser.fuse(modules, sms, interleave=True) if interleave else fuser.fuse(modules, sms)

        for layer in self.layers:
            qkv, (o,), gate_up, (down,) = _linears(layer)
            mlp = layer.mlp
            if Gemv.fusable(qkv):
                plan[id(qkv[0])] = Gemv.fuse(qkv, sms, self.pdl)
                fused += 1
            elif (launch := fuse_quantised(qkv)) is not None:
                plan[id(qkv[0])] = launch
            if hasattr(mlp, "act_fn") and Gemv.fusable(gate_up):
                plan[id(mlp.gate_proj)] = Gemv.fuse(gate_up, sms, self.pdl, interleave=self.fold)
            elif hasattr(mlp, "act_fn") and (launch := fuse_quantised(gate_up, interleave=self.fold)) is not None:
                plan[id(mlp.gate_proj)] = launch
            for module in (o, down):
                if Gemv.fusable([module]):
                    plan[id(module)] = Gemv.fuse([module], sms, self.pdl)
                elif module is not None and (launch := fuse_quantised([module])) is not None:
                    plan[id(module)] = launch
        if Gemv.fusable([self.lm_head]):
            plan[id(self.lm_head)] = Gemv.fuse([self.lm_head], sms, self.pdl)
        for what, launches in quantised.items():
            self.notes.append(
                f"lean: {what} ({launches} launches: q, k, v as one and gate, up as another; o and down "
                + ("each alone, folded)" if self.fold else "through their modules)")
            )
        sixteen = len(plan) - sum(quantised.values())  # the 16-bit GEMV's launches
        if sixteen:
            what = "q, k, v as one launch and gate, up as another" if fused else "each layer alone"
            self.notes.append(f"lean: 16-bit linear layers: qbench's Triton GEMV ({sixteen} weights; {what})")
        return plan

    def _linear(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        planned = self.linear16.get(id(module))
        return module(x) if planned is None else planned(x).view(1, 1, -1)

    # ---- the model, one position or a whole prompt --------------------------------------------------
    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + decode_attention.rotate_half(x) * sin

    def _at(self, position: torch.Tensor):
        """What a step's attention needs of its position: the rotary tables' rows [1, head_dim] where the
        step rotates q and k (None where the attention kernel reads the tables itself), and SDPA's mask
        (None for the split-K kernel)."""
        cos = sin = None
        if not self.rope_in_attention:
            cos, sin = self.cos.index_select(0, position), self.sin.index_select(0, position)
        visible = None if self.split_programs else self.kv_positions <= position
        return cos, sin, visible

    def _decode(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One position: token [1, 1], position [1] (device tensors); returns logits [vocab]."""
        hidden = self.embed(token)
        cos, sin, visible = self._at(position)
        delta = None  # the last MLP's output, added to the residual by the next norm's kernel
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            hidden, x = self._add_norm(layer.input_layernorm, hidden, delta)
            qkv = self.linear16.get(id(attention.q_proj))
            if qkv is not None:
                q, k, v = qkv(x).split(qkv.sizes)
            else:
                q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
            out = self._attention(index, q, k, v, position, cos, sin, visible)
            hidden, x = self._add_norm(layer.post_attention_layernorm, hidden, self._linear(attention.o_proj, out))
            delta = self._mlp(layer.mlp, x)
        hidden, x = self._add_norm(self.norm, hidden, delta)
        return self._linear(self.lm_head, x)[0, -1]

    def _decode_folded(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """`_decode` with QBENCH_LEAN_FOLD=on: the residual stream `hidden` and `scaled`, the next norm's
        input times its weight, come out of one GEMV (o, down: `scale_out`); the GEMV that reads the
        norm's output takes `scaled` and applies the RMS scale of `hidden` (q/k/v, gate/up, lm_head);
        gate/up returns the SiLU product; the rope and the cache write go inside the split-K attention
        where it runs. Returns logits [vocab]."""
        hidden = self.embed(token).view(-1)  # the residual stream, [hidden size]
        first = self.layers[0].input_layernorm.weight
        scaled = (hidden.float() * first.float()).to(hidden.dtype)  # the first norm's input times its weight
        cos, sin, visible = self._at(position)
        rms = {"rms": hidden}  # what the next norm's RMS scale is computed from: h, or its sums of squares
        for index, layer in enumerate(self.layers):
            attention, mlp = layer.self_attn, layer.mlp
            before, after = layer.input_layernorm, layer.post_attention_layernorm
            following = self.layers[index + 1].input_layernorm if index + 1 < len(self.layers) else self.norm
            qkv = self.linear16[id(attention.q_proj)]
            q, k, v = qkv(scaled, eps=float(before.variance_epsilon), **rms).view(1, 1, -1).split(qkv.sizes, dim=-1)
            out = self._attention(index, q, k, v, position, cos, sin, visible)
            o, gate_up, down = (self.linear16[id(m)] for m in (attention.o_proj, mlp.gate_proj, mlp.down_proj))
            hidden, scaled, rms = self._residual_out(o, out, hidden, after.weight)
            act = gate_up(scaled, eps=float(after.variance_epsilon), silu=True, **rms)
            hidden, scaled, rms = self._residual_out(down, act, hidden, following.weight)
        return self.linear16[id(self.lm_head)](scaled, hidden, float(self.norm.variance_epsilon))

    def _residual_out(self, launch, x: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor):
        """(h, h times the next norm's weight, the next folded GEMV's RMS arguments) from o or down's
        launch, h = hidden + W x: the RMS from h itself, or (`fold_squares`) from the float32 sums of
        squares the launch stored after them."""
        if not self.fold_squares:
            hidden, scaled = launch(x, residual=hidden, scale_out=weight).view(2, -1)
            return hidden, scaled, {"rms": hidden}
        y = launch(x, residual=hidden, scale_out=weight, squares=True)
        hidden, scaled = y[:2 * hidden.numel()].view(2, -1)
        return hidden, scaled, {"rms": y[2 * hidden.numel():].view(torch.float32), "rms_parts": True}

    def _add_norm(self, norm: torch.nn.Module, hidden: torch.Tensor, delta: torch.Tensor | None):
        """(hidden + delta, norm(hidden + delta)); delta None: hidden as it is."""
        if self.own_elementwise:
            summed, x = elementwise.add_rmsnorm(hidden, delta, norm.weight, norm.variance_epsilon, self.pdl)
            return summed.view(1, 1, -1), x.view(1, 1, -1)
        if delta is not None:
            hidden = hidden + delta
        return hidden, norm(hidden)

    def _attention(self, index, q, k, v, position, cos, sin, visible) -> torch.Tensor:
        """One layer's attention output [1, 1, heads * head_dim] from its projections (q, k before
        rotary embedding); writes the position's k and v into the cache."""
        if self.rope_in_attention:  # the rope, the cache write and the attention: two launches
            return decode_attention.decode_attention_rope(
                q.reshape(self.heads, self.head_dim), k.reshape(-1), v.reshape(-1), self.kv_cache, index,
                self.cos, self.sin, position, self.scale, self.split_programs, self.planned_positions, self.pdl,
                self.attention_fused,
            ).view(1, 1, self.heads * self.head_dim)
        q = self._rope(q.view(self.heads, self.head_dim), cos, sin)
        k = self._rope(k.view(self.kv_heads, 1, self.head_dim), cos, sin)
        v = v.view(self.kv_heads, 1, self.head_dim)
        write_kv(self.kv_cache, index, position, torch.stack((k, v)).to(self.kv_cache.dtype))
        k_cache, v_cache = self.k_cache[index], self.v_cache[index]  # [kv heads, positions, head_dim]
        # Query head j attends with kv head j // group; K and V are read once and never expanded,
        # and the scores are accumulated in float32 inside the attention kernel. The split-K kernel
        # takes each kv head's group of query heads per chunk of positions; SDPA takes them in its
        # query-length place ([1, kv heads, group, head_dim] against [1, kv heads, positions, head_dim]).
        if self.split_programs:
            out = decode_attention.decode_attention(
                q, k_cache, v_cache, position, self.scale, self.split_programs, self.planned_positions, self.pdl,
                self.attention_fused,
            )
        else:
            grouped = q.view(1, self.kv_heads, self.group, self.head_dim)
            out = F.scaled_dot_product_attention(
                grouped, k_cache[None], v_cache[None], attn_mask=visible.view(1, 1, 1, -1), scale=self.scale
            )
        return out.reshape(1, 1, self.heads * self.head_dim)

    def _mlp(self, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.linear16.get(id(getattr(mlp, "gate_proj", None)))
        if gate_up is None:
            return mlp(x)
        if self.own_elementwise:
            return self._linear(mlp.down_proj, elementwise.silu_mul(gate_up(x), self.pdl).view(1, 1, -1))
        gate, up = gate_up(x).split(gate_up.sizes)
        return self._linear(mlp.down_proj, (mlp.act_fn(gate) * up).view(1, 1, -1))

    def _forward_prompt(self, ids: torch.Tensor, every_position: bool) -> torch.Tensor:
        """Positions 0..T-1 at once (causal), filling the cache; logits of the last or every position."""
        length = ids.numel()
        hidden = self.embed(ids.view(1, length))
        cos, sin = self.cos[:length], self.sin[:length]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            fused = self.linear16.get(id(attention.q_proj))
            if getattr(fused, "any_rows", False):  # a fused launch that takes a prompt: once, not per layer
                q, k, v = fused.rows(x).split(fused.sizes, dim=-1)
            else:
                q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
            q = self._rope(q.view(length, self.heads, self.head_dim).transpose(0, 1), cos, sin)
            k = self._rope(k.view(length, self.kv_heads, self.head_dim).transpose(0, 1), cos, sin)
            v = v.view(length, self.kv_heads, self.head_dim).transpose(0, 1)
            self.k_cache[index, :, :length] = k
            self.v_cache[index, :, :length] = v
            out = F.scaled_dot_product_attention(
                q[None], k[None], v[None], is_causal=True, scale=self.scale, enable_gqa=True
            )
            hidden = hidden + attention.o_proj(out[0].transpose(0, 1).reshape(1, length, self.heads * self.head_dim))
            x = layer.post_attention_layernorm(hidden)
            fused = self.linear16.get(id(getattr(layer.mlp, "gate_proj", None)))
            if getattr(fused, "any_rows", False):
                gate, up = fused.rows(x).split(fused.sizes, dim=-1)
                hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            else:
                hidden = hidden + layer.mlp(x)
        if not every_position:
            hidden = hidden[:, -1:]
        return self.lm_head(self.norm(hidden))[0]

    # ---- the Runner protocol --------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._reference:
            return self._hf.prefill(tokens)
        length = tokens.numel()
        if length >= self.max_cache_len:
            raise ValueError(f"prefill of {length} tokens does not fit a cache of {self.max_cache_len}")
        logits = self._forward_prompt(tokens, every_position=False)
        self.next_position = length
        return logits[-1].float()

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self._reference:
            return self._hf.step(token)
        return modules.step(self, token, self._call_step)

    def _call_step(self) -> torch.Tensor:
        try:
            return self._step_fn(self.token, self.position)
        except Exception as error:  # a backend whose kernel torch.compile cannot trace: say so, run uncompiled
            if self._step_fn == self._uncompiled:
                raise
            self._step_fn = self._uncompiled
            self.notes.append(
                f"lean: torch.compile failed ({type(error).__name__}: {str(error)[:160]}); ran uncompiled"
            )
            return self._uncompiled(self.token, self.position)

    @torch.inference_mode()
    def capture_graph(self, warmup_steps: int = CAPTURE_WARMUP_STEPS) -> None:
        modules.capture_graph(self, lambda: self._step_fn(self.token, self.position), warmup_steps)

    def step_bytes(self, ctx: int):
        return modules.step_bytes(self.model, ctx)

    def reference(self, on: bool) -> None:
        """While on, prefill/step are the `hf` runtime's on the plain path (dequantised weights): the
        gate checks lean's logits, kernel and runtime together, against transformers'."""
        if on and self._hf is None:
            from qbench.runtimes.hf import DecoderRunner

            self._hf = DecoderRunner(self.model, self.planned_positions, str(self.device))  # as before the room
        modules.set_reference(self.model, on)
        self._reference = on

    def release_reference(self) -> None:
        modules.release_reference(self.model)
        self._hf = None  # and its cache

    def quant_layers(self):
        return modules.quant_layers(self.model)

    @torch.inference_mode()
    def score(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() > self.max_cache_len:
            raise ValueError(f"{ids.numel()} tokens do not fit a cache of {self.max_cache_len}")
        return self._forward_prompt(ids, every_position=True)


def compile_keyed(step):
    """torch.compile(step), every cache of torch.compile's keyed to qbench's measured code too
    (torch.compiler.config.cache_key_tag). torch's on-disk caches key a graph by its ops and their
    arguments, not by a custom op's schema: on the H100, after qbench's GEMV took other arguments, a
    step compiled by the qbench before was found and called the op with an argument it no longer has,
    and lean ran uncompiled (it said so); a tag per measured code never finds another's."""
    config = torch.compiler.config
    tag = f"qbench-{settings.measured_code_digest()}"
    if hasattr(config, "cache_key_tag") and tag not in config.cache_key_tag:
        config.cache_key_tag = f"{config.cache_key_tag}|{tag}" if config.cache_key_tag else tag
    lower_qbench_ops_as_fallbacks()
    return torch.compile(step, dynamic=False)


QBENCH_OPS = ("gemv", "gemv_int4", "decode_attention", "decode_attention_rope", "add_rmsnorm", "silu_mul", "write_kv")


def lower_qbench_ops_as_fallbacks() -> list[str]:
    """Registers each of qbench's custom ops with inductor as what it lowers to anyway, an opaque call
    (a fallback, with the layout constraint inductor gives a custom op), before a step compiles; returns
    the ops it registered. Left to inductor, an op is registered at its first call in a graph, and torch
    2.11 formats that call's arguments for a log line first, whether or not the log is on (later
    versions format it only for the log). Those arguments are inductor's nodes, each printing its
    inputs in turn. In lean's folded step with qbench-int4, lean's 16-bit GEMV is first called at
    lm_head, whose inputs are views of the last layer's GEMV output, whose inputs are views of the one
    before: a text that grows several-fold with every layer. On the H100 that compile did not return
    (results/h100/step6/README.md). A torch without these helpers (an older one) is left to register
    them itself, as before: the ops lower the same either way."""
    try:
        from torch._inductor import lowering
        from torch._library.utils import get_layout_constraint_tag

        lowering.tag_to_layout_constraint  # noqa: B018 - absent from older torch
    except (ImportError, AttributeError):
        return []
    from qbench.runtimes.kernels import gemv_int4  # noqa: F401 - registers qbench::gemv_int4

    registered = []
    for name in QBENCH_OPS:
        op = getattr(torch.ops.qbench, name).default
        if op not in lowering.lowerings:
            constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
            lowering.make_fallback(op, layout_constraint=constraint)
            registered.append(name)
    return registered


def _switched_on(variable: str) -> bool:
    """A two-way switch of lean's (its values, the default first: settings.MEASURE_VARIABLES): whether it
    is set to its other value (on; fused); any value but the two is refused in one line."""
    allowed = settings.MEASURE_VARIABLES[variable]
    choice = os.environ.get(variable, allowed[0])
    if choice not in allowed:
        raise ValueError(f"{variable} must be {' or '.join(allowed)}, got {choice!r}")
    return choice == allowed[1]


def _is_silu(module) -> bool:
    return isinstance(module, torch.nn.SiLU) or type(module).__name__ == "SiLUActivation"


def _linears(layer) -> list[list]:
    """A layer's linear layers as lean launches them: q, k, v; o; gate, up; down."""
    attention, mlp = layer.self_attn, layer.mlp
    return [
        [attention.q_proj, attention.k_proj, attention.v_proj], [attention.o_proj],
        [getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)], [getattr(mlp, "down_proj", None)],
    ]


def _folds(modules: list) -> bool:
    """Whether one launch of lean's own over `modules` takes the fold's arguments: lean's 16-bit GEMV, or
    the modules' fuser where it declares `folds` (qbench-int4's); gate and up must be of one size."""
    if any(m is None for m in modules) or (len(modules) == 2 and modules[0].out_features != modules[1].out_features):
        return False
    if Gemv.fusable(modules):
        return True
    fuser = getattr(type(modules[0]), "lean_fuser", None)
    return bool(fuser is not None and getattr(fuser, "folds", False) and fuser.fusable(modules))

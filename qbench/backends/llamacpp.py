"""llama.cpp backends: GGUF types run by llama.cpp (through llama-cpp-python), a whole engine behind
the Runner protocol (qbench.api). One family, one backend per GGUF type:

  llamacpp-f16     F16 weights: the family's 16-bit baseline (realised x of the others is against it)
  llamacpp-q8_0    Q8_0: 8-bit blocks of 32 with an f16 scale (8.5 bits per weight)
  llamacpp-q4_0    Q4_0: 4-bit blocks of 32 with an f16 scale (4.5 bits per weight)
  llamacpp-q4_k_m  Q4_K_M: 4-bit super-blocks of 256, some tensors kept in Q6_K (llama.cpp's mix)

Weights: synthetic weights are the spec's seeded transformers tensors written as an F16 GGUF
(qbench/formats/gguf_write.py) and quantised by llama.cpp's own quantiser, each file cached like other
synthetic weights (qbench.model.cache). Real weights are any .gguf: used as they are where the file's type
is the backend's, else quantised by llama.cpp from the file (requantised: the table says so).
Bytes per step come from the GGUF's own tensor types (qbench/formats/gguf_bytes.py) and llama.cpp's F16
KV cache. llama.cpp runs in its own process (qbench/formats/llamacpp_engine.py says why), which times
each single-token decode call with a wall clock around llama_decode and the copy of the logits it
returns (they come back only when ready): timer "runner". CUDA graphs are llama.cpp's own; it reads its switch
(GGML_CUDA_DISABLE_GRAPHS) once per process, so each graphs setting runs in its own session process.
The gate compares the logits with transformers running the same GGUF dequantised, in float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from qbench.api import Backend, LoadOptions, StepBytes

MAX_BATCH = 512  # tokens one llama_decode call takes (prefill is fed in chunks of this)


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def file_type_name(path: Path) -> str:
    """The GGUF's general.file_type as llama.cpp names it (e.g. MOSTLY_Q4_1), or '?'."""
    from gguf import LlamaFileType

    from qbench.model import gguf_files

    field = gguf_files.reader(path).fields.get("general.file_type")
    if field is None:
        return "?"
    try:
        return LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(field.contents())


class LlamaCppBackend(Backend):
    gguf_type: ClassVar[str] = ""
    runtimes = ("llamacpp",)
    packages = {"llama_cpp": "llama-cpp-python", "gguf": "gguf"}
    extra = "llamacpp"
    compute_dtype = "float32"  # ggml computes in f32 (quantised dot products take q8 activations)
    graphs_per_process = True
    kernel_pattern = r"mul_mat_vec_q"
    family = "llama.cpp"

    def label(self, group_size: int) -> str:
        return self.name

    def unsupported_reason(self, spec: Any, weights: str) -> str | None:
        if weights != "synthetic":
            return None
        from qbench.formats.gguf_write import unsupported_reason

        reason = unsupported_reason(spec)
        return f"synthetic weights for {spec.name}: {reason}" if reason else None

    def load(self, spec: Any, options: LoadOptions) -> Any:
        path, notes, cached = self.weights_file(spec, options)
        runner = LlamaCppRunner(path, options, self.gguf_type, notes)
        runner.weights_cache = cached
        return runner

    # ---- weights --------------------------------------------------------------------------------
    def weights_file(self, spec: Any, options: LoadOptions) -> tuple[Path, list[str], str]:
        """(the GGUF llama.cpp runs, notes for the table, weights-cache state)."""
        from qbench.formats.gguf_write import quantize
        from qbench.model.cache import Cache
        from qbench.model.weights import check_gguf

        cache = Cache()
        if options.weights == "synthetic":
            source, made = self.synthetic_f16(spec, options, cache)
            if self.gguf_type == "F16":
                return source, [], made
            key = self._key({"source": source.stem, "type": self.gguf_type, "llama_cpp": _version("llama-cpp-python")})
            path, state = cache.file(
                key, ".gguf", lambda out: quantize(source, out, self.gguf_type, _threads()), check_gguf,
                size_hint=source.stat().st_size,
            )
            return path, [], state
        if options.weights == "gguf":
            from qbench.model.build import packaged_gguf

            given = packaged_gguf(spec)
        else:
            given = Path(options.weights)
        have = file_type_name(given)
        if have == self.gguf_type:
            return given, [f"the file's own {have} tensors"], "off"
        stat = given.stat()
        key = self._key(
            {"file": str(given.resolve()), "bytes": stat.st_size, "mtime": stat.st_mtime_ns, "type": self.gguf_type,
             "llama_cpp": _version("llama-cpp-python")}
        )
        path, state = cache.file(
            key, ".gguf", lambda out: quantize(given, out, self.gguf_type, _threads(), requantize=True), check_gguf,
            size_hint=stat.st_size * 4,
        )
        verb = "converted" if self.gguf_type == "F16" else "requantised"
        return path, [f"{verb} by llama.cpp from the file's {have} to {self.gguf_type}"], state

    def synthetic_f16(self, spec: Any, options: LoadOptions, cache: Any) -> tuple[Path, str]:
        """The spec's seeded weights as an F16 GGUF, from the cache or written now."""
        import torch
        import transformers

        from qbench.formats.gguf_write import write_synthetic
        from qbench.model.build import _synthetic
        from qbench.model.weights import check_gguf

        ingredients = {
            "what": "synthetic F16 GGUF",
            "model": spec.hf_config,
            "seed": options.seed,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": _version("gguf"),
            "writer": 1,
        }
        key = self._key(ingredients)

        def make(out: Path) -> None:
            model = _synthetic(spec, torch.bfloat16, options.device, options.seed)  # the bf16 backend's tensors
            about = json.dumps({"what": f"synthetic weights of {spec.name}, seed {options.seed}"})
            write_synthetic(model, spec, out, about)
            del model
            if options.device == "cuda":
                torch.cuda.empty_cache()

        linear = spec.num_layers * sum(i * o for _, i, o, _ in spec.linear_shapes())
        size = 2 * (linear + 2 * spec.vocab_size * spec.hidden_size)  # F16 bytes, untied lm_head at most
        return cache.file(key, ".gguf", make, check_gguf, size_hint=size)

    @staticmethod
    def _key(ingredients: dict) -> str:
        from qbench.model.cache import key_of

        return "gguf-" + key_of(ingredients)


class LlamaCppF16(LlamaCppBackend):
    name = "llamacpp-f16"
    description = "GGUF F16 run by llama.cpp: the family's 16-bit baseline"
    kernel = "llama.cpp F16 matrix-vector (mul_mat_vec_f / cuBLAS)"
    kernel_pattern = r"mul_mat_vec|gemv|gemm"
    gguf_type = "F16"
    bits = 16
    baseline = True


class LlamaCppQ8_0(LlamaCppBackend):
    name = "llamacpp-q8_0"
    description = "GGUF Q8_0 run by llama.cpp: 8-bit blocks of 32, f16 scale"
    kernel = "llama.cpp mul_mat_vec_q (Q8_0 x q8_1)"
    gguf_type = "Q8_0"
    bits = 8


class LlamaCppQ4_0(LlamaCppBackend):
    name = "llamacpp-q4_0"
    description = "GGUF Q4_0 run by llama.cpp: 4-bit blocks of 32, f16 scale"
    kernel = "llama.cpp mul_mat_vec_q (Q4_0 x q8_1)"
    gguf_type = "Q4_0"
    bits = 4


class LlamaCppQ4KM(LlamaCppBackend):
    name = "llamacpp-q4_k_m"
    description = "GGUF Q4_K_M run by llama.cpp: 4-bit K-quant super-blocks, some tensors Q6_K"
    kernel = "llama.cpp mul_mat_vec_q (Q4_K/Q6_K x q8_1)"
    gguf_type = "Q4_K_M"
    bits = 4


class LlamaCppRunner:
    """llama.cpp behind the Runner protocol: one context, one sequence, one token per llama_decode,
    in llama.cpp's own process (qbench/formats/llamacpp_engine.py), which times each call itself."""

    runtime = "llamacpp"
    timer = "runner"  # the engine's wall clock around llama_decode and the copy of its logits
    graphs = "runtime"
    kernels_elsewhere = "not profiled: llama.cpp's kernels run in its own process"

    def __init__(self, path: Path, options: LoadOptions, gguf_type: str, notes: list[str]):
        import subprocess
        import sys

        import torch

        self.path = Path(path)
        self.options = options
        self.cuda = options.device == "cuda"
        self.graphs_on = bool(options.graphs) and self.cuda
        env = dict(os.environ)
        if self.cuda and not self.graphs_on:
            env["GGML_CUDA_DISABLE_GRAPHS"] = "1"  # read once per process, at its first decode
        else:
            env.pop("GGML_CUDA_DISABLE_GRAPHS", None)
        free_before = torch.cuda.mem_get_info()[0] if self.cuda else 0
        engine = Path(__file__).parents[1] / "formats" / "llamacpp_engine.py"
        self.process = subprocess.Popen(
            [sys.executable, str(engine)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.step_pids = [self.process.pid]  # the engine's process holds the model (qbench.session.energy)
        threads = _threads()
        info = self._call("load", str(self.path), max(options.max_cache_len, MAX_BATCH), MAX_BATCH, self.cuda, threads)
        self.vocab_size = info["vocab"]
        if self.cuda:  # what llama.cpp's process holds, its CUDA context included
            self.device_memory_mib = round((free_before - torch.cuda.mem_get_info()[0]) / 2**20, 1)
        self.device = torch.device("cpu")  # the logits come back to host memory
        self.last_step_ms = 0.0
        self._reference: Any = None
        self.reference_on = False
        # llama.cpp's default flash-attention setting is "auto": its graph log shows what it chose
        attention = (
            "flash attention on (llama.cpp's auto setting; FLASH_ATTN_EXT in its graph)"
            if any("FLASH_ATTN_EXT" in line for line in info["log"])
            else "flash attention: llama.cpp's auto setting (no FLASH_ATTN_EXT seen in its graph log)"
        )
        where = "all layers on the GPU" if self.cuda else f"CPU, {threads} threads"
        self.notes = [
            f"llama.cpp (llama-cpp-python {_version('llama-cpp-python')}), {gguf_type}, {where}, in its own process",
            "KV cache F16; " + attention,
            f"CUDA graphs: llama.cpp's own, {'on' if self.graphs_on else 'off (GGML_CUDA_DISABLE_GRAPHS=1)'}"
            if self.cuda
            else "no CUDA graphs on CPU",
            *notes,
        ]

    def _call(self, *message: Any) -> Any:
        from qbench.formats.llamacpp_engine import read_message, write_message

        try:
            write_message(self.process.stdin, message)
            reply = read_message(self.process.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            code = self.process.wait(timeout=30)
            raise RuntimeError(f"llama.cpp's process ended (exit {code}) during {message[0]}")
        if reply[0] != "ok":
            raise RuntimeError(f"llama.cpp: {reply[1]}")
        return reply[1] if len(reply) == 2 else reply[1:]

    def _tensor(self, data: bytes) -> Any:
        import numpy as np
        import torch

        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())

    # ---- decoding ---------------------------------------------------------------------------------
    def prefill(self, tokens: Any) -> Any:
        if self.reference_on:
            return self._reference.prefill(tokens.to(self._reference.device)).float().cpu()
        self._check_graphs()
        return self._tensor(self._call("prefill", [int(t) for t in tokens.tolist()]))

    def step(self, token: Any) -> Any:
        if self.reference_on:
            return self._reference.step(token.to(self._reference.device)).float().cpu()
        seconds, logits = self._call("step", int(token[0]))
        self.last_step_ms = seconds * 1e3
        return self._tensor(logits)

    def score(self, ids: Any) -> Any:
        """Logits of every position of `ids` (at most MAX_BATCH tokens) from position 0: perplexity."""
        tokens = [int(t) for t in ids.tolist()][:MAX_BATCH]
        return self._tensor(self._call("score", tokens)).reshape(len(tokens), self.vocab_size)

    # ---- protocol -----------------------------------------------------------------------------------
    def set_graphs(self, on: bool) -> None:
        """Recorded here, checked when a block starts (prefill): llama.cpp's setting is the process's."""
        if on and not self.cuda:
            raise RuntimeError("llama.cpp on CPU has no CUDA graphs")
        self.requested = on

    def _check_graphs(self) -> None:
        if self.cuda and getattr(self, "requested", self.graphs_on) != self.graphs_on:
            raise RuntimeError(
                f"llama.cpp reads GGML_CUDA_DISABLE_GRAPHS once per process and this one runs with graphs "
                f"{'on' if self.graphs_on else 'off'}: qbench runs each setting in its own session"
            )

    def step_bytes(self, ctx: int) -> StepBytes:
        from qbench.formats.gguf_bytes import step_bytes

        return step_bytes(self.path, ctx, kv_type="F16")

    def reference(self, on: bool) -> None:
        """The same GGUF dequantised by transformers, in float32 on the same device."""
        if on and self._reference is None:
            import torch

            from qbench.model.build import _load_gguf
            from qbench.runtimes.hf import DecoderRunner

            model = _load_gguf(self.path, torch.float32, self.options.device).eval().requires_grad_(False)
            self._reference = DecoderRunner(model, self.options.max_cache_len, self.options.device)
        self.reference_on = on

    def release_reference(self) -> None:
        self._reference = None
        self.reference_on = False
        if self.cuda:
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is None or process.poll() is not None:
            return
        from qbench.formats.llamacpp_engine import write_message

        try:
            write_message(process.stdin, ("quit",))
        except OSError:
            pass
        try:
            process.wait(timeout=10)
        except Exception:  # it does not go: it must not outlive the session
            process.kill()

    def __del__(self):
        self.close()

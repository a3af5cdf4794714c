import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The README's test command runs two xdist workers on CI's two cores, and most slow tests start sessions,
# each a process of its own: with torch's default of one OpenMP thread a core in every process, those
# threads outnumber the cores and spin against each other. One each (set before any torch import here;
# inherited by every session and interpreter a test starts). test_quality with test_cache under -n 2:
# 243 s of wall time with the default, 200 s with one thread (this machine, 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def install_plugin(site: Path, monkeypatch, dist: str, module: str, source: str, entries: dict[str, str]) -> Path:
    """A third-party distribution `dist` whose module registers `entries` (name -> attribute) in the
    qbench.backends group, importable here and in worker processes (PYTHONPATH)."""
    package = site / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[qbench.backends]\n" + "".join(f"{k} = {module}:{v}\n" for k, v in entries.items())
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return site


FAKE_BACKENDS = '''
        import os, signal, time
        import torch
        from qbench.backend import Backend
        from qbench.backends.bf16 import Bf16Backend

        class FakeOk(Bf16Backend):
            name = "fake-ok"
            description = "bf16 under another name, from a plugin"

        class FakeSegv(Backend):
            name = "fake-segv"
            def load(self, spec, options):
                os.kill(os.getpid(), signal.SIGSEGV)

        class FakeHang(Backend):
            name = "fake-hang"
            def load(self, spec, options):
                time.sleep(3600)

        class FakeSlowKernel(Bf16Backend):
            """Its kernel takes a while to prepare, as a first-run build does."""
            name = "fake-slow-kernel"
            builds_kernel = True
            def prepare(self, device):
                time.sleep(5)

        class FakeParricide(Bf16Backend):
            """Kills the forkserver that forked it (its session is lost), then loads as bf16."""
            name = "fake-parricide"
            def load(self, spec, options):
                parent = os.getppid()
                with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
                    if b"--serve" in cmdline.read():
                        os.kill(parent, signal.SIGKILL)
                        time.sleep(30)  # its own end comes with the parent's (PR_SET_PDEATHSIG)
                return super().load(spec, options)

        class FakeOom(Backend):
            name = "fake-oom"
            def load(self, spec, options):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        def held_linear(linear, group_size, kernel):
            """A QuantLinear whose format is the 16-bit weight itself (stored bytes: Backend's
            default linear_bytes) and whose kernel is `kernel(layer, x)`."""
            from qbench.quantlinear import QuantLinear
            class Held(QuantLinear):
                def __init__(self):
                    super().__init__(linear.in_features, linear.out_features, linear.bias, group_size)
                    self.weight = torch.nn.Parameter(linear.weight.detach(), requires_grad=False)
                def stored_tensors(self):
                    return [self.weight]
                def dequantize(self):
                    return self.weight.float()
                def kernel_forward(self, x):
                    return kernel(self, x)
            return Held()

        class FakeWrong(Bf16Backend):
            """Quantises to garbage: its kernel multiplies by a random matrix."""
            name = "fake-wrong"
            bits = 4
            def quantize_linear(self, linear, group_size):
                noise = torch.randn_like(linear.weight.detach()) * linear.weight.detach().std()
                return held_linear(
                    linear, group_size, lambda layer, x: torch.nn.functional.linear(x, noise.to(x.dtype), layer.bias)
                )

        class FakeRounding(Bf16Backend):
            """Says its kernels round the activations (the gate then decides on its layers); its
            kernel is the reference's product, except, where `wrong_above` is set, on inputs of more
            rows than that: a path (the prefill's GEMM) that the layer check's 1 and 16 rows never run."""
            name = "fake-rounding"
            bits = 8
            rounds_activations = True
            wrong_above = None
            def quantize_linear(self, linear, group_size):
                wrong_above = self.wrong_above
                def kernel(layer, x):
                    out = torch.nn.functional.linear(x, layer.weight.to(x.dtype), layer.bias)
                    rows = x.numel() // x.shape[-1]
                    return out * 1.5 if wrong_above is not None and rows > wrong_above else out
                return held_linear(linear, group_size, kernel)

        class FakeRoundingWrongPrefill(FakeRounding):
            name = "fake-rounding-wrong-prefill"
            wrong_above = 16
    '''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A small third-party distribution that registers backends through the qbench.backends group."""
    names = {
        "fake-ok": "FakeOk",
        "fake-segv": "FakeSegv",
        "fake-hang": "FakeHang",
        "fake-oom": "FakeOom",
        "fake-wrong": "FakeWrong",
        "fake-slow-kernel": "FakeSlowKernel",
        "fake-parricide": "FakeParricide",
        "fake-rounding": "FakeRounding",
        "fake-rounding-wrong-prefill": "FakeRoundingWrongPrefill",
    }
    yield install_plugin(tmp_path / "site", monkeypatch, "qbench-fakeplugin", "qbench_fakeplugin", FAKE_BACKENDS, names)
    sys.modules.pop("qbench_fakeplugin", None)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in a fresh directory, so results/ of the checkout is never written, with its
    own weights cache and device locks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "weights-cache"))
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# The modules that take longest here (`pytest --durations=0` on a 2-core machine, 2026-12-07: 380 s of
# test time down to 140 s), longest first. Under the README's `-n 2 --dist loadscope` a worker takes a
# whole module at a time; xdist orders them by their count of tests, which sent the long modules of few
# tests (processes, quality, ray) last, to one worker, while the other sat idle: about 100 s of the
# suite's 26 minutes. Here they go first (longest first: the other modules then fill in around them),
# and xdist keeps that order.
LONGEST_FIRST = (
    "test_processes", "test_fold", "test_ray_executor", "test_plugins_hostile", "test_cli",
    "test_decode_attention", "test_quality", "test_runtimes",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the collection's module order
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests keep their order
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parent.parent


def tiny_model(backend: str, max_cache_len: int = 32):
    """The tiny spec's synthetic model loaded by `backend` on the CPU (group size 128)."""
    from qbench.api import LoadOptions
    from qbench.registry import load_backend
    from qbench.specs import load_model_spec

    options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=max_cache_len, group_size=128)
    return load_backend(backend).load(load_model_spec("tiny"), options).model


# The start of a child script (`run_interpreted`) running qbench-int4 on the tiny spec under lean: the
# spec, options and backend; a block table of few, large programs (the interpreter's cost is per
# program; down's 6 groups split in 3); `load()`, the model with Qwen2's q, k, v biases (the tiny spec
# has none); lean's 16-bit GEMV on the CPU; the prompt's tokens.
INT4_TINY_LEAN = """
import os, torch
from qbench.api import LoadOptions
from qbench.session.decode import token_stream
from qbench.registry import load_backend
from qbench.runtimes.kernels import gemv_int4
from qbench.runtimes.lean import LeanRunner
from qbench.specs import load_model_spec
spec = load_model_spec("tiny")
options = LoadOptions(device="cpu", weights="synthetic", seed=0, max_cache_len=96, group_size=128)
gemv_int4.TABLE.update({(512, 256): (128, 2, 1, 4), (1536, 256): (128, 2, 1, 4), (256, 256): (128, 1, 1, 4),
                        (256, 768): (128, 2, 3, 4)})
backend = load_backend("qbench-int4")
os.environ["QBENCH_LEAN_GEMV"] = "triton"
tokens = token_stream(spec.vocab_size, 72, 0, "cpu")


def load():
    model = backend.load(spec, options).model
    torch.manual_seed(1)
    for layer in model.get_decoder().layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias = torch.nn.Parameter(torch.randn(proj.out_features, dtype=torch.bfloat16) * 0.1)
    return model
"""


def run_interpreted(code: str) -> str:
    """Run `code` in a child Python with Triton's interpreter on (TRITON_INTERPRET is read when a
    kernel is defined, so each check needs its own process); returns its stdout."""
    import os
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def kept_results() -> list[Path]:
    """The files under results/ that a commit keeps: in a git checkout what git tracks or would add,
    not what it ignores (`qbench compare` run in a checkout, as the README's first command is, writes
    its default store results/qbench.sqlite there, which git ignores); elsewhere every file."""
    root = Path(__file__).resolve().parent.parent
    try:
        names = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in (root / "results").rglob("*") if p.is_file())
    return sorted(root / name for name in names if (root / name).is_file())


def ptx_for_sm90(function, signature: dict, fixed: dict, warps: int = 4, aligned: tuple = ()) -> str | None:
    """`kernels.compile_for_h100`'s PTX, or None where this Triton has no ptxas (its front end still
    ran, so a kernel the compiler refuses still fails)."""
    from qbench.runtimes.kernels import compile_for_h100

    try:
        return compile_for_h100(function, signature, fixed, aligned, warps).asm["ptx"]
    except RuntimeError as error:
        if "ptxas" not in str(error).lower():
            raise
        return None


def int4_ptx(constants: dict, warps: int = 4) -> str | None:
    """qbench-int4's GEMV compiled for sm_90 (`gemv_int4.compile_for_sm90`): its PTX, or None where this
    Triton has no ptxas (its front end still ran)."""
    from qbench.runtimes.kernels import gemv_int4

    try:
        return gemv_int4.compile_for_sm90(constants, warps).asm["ptx"]
    except RuntimeError as error:
        if "ptxas" not in str(error).lower():
            raise
        return None


# QBENCH_LEAN_FOLD's two forms of a GEMV launch, as the kernels' constexprs: the one that reads a norm's
# output (its RMS scale; gate/up's SiLU product) and the one that adds the residual (and scales by the
# next norm's weight)
FOLD_FORMS = (
    {"RMS": True, "SILU": True, "RESIDUAL": False, "SCALE_OUT": False},
    {"RMS": False, "SILU": False, "RESIDUAL": True, "SCALE_OUT": True},
)


def decode_attention_ptx(
    kernel: str, rope: bool = False, pdl: bool = False, chunk: int = 32, fused: bool = False
) -> str | None:
    """The split-K attention's `partial` or `combine` kernel compiled for sm_90 at Qwen2.5-7B's shapes
    (98 chunks of `chunk` positions), `ptx_for_sm90`'s answer; `fused`: the partial kernel combining."""
    from qbench.runtimes.kernels import decode_attention as attention

    shapes = {"GROUP": 7, "ROWS": 16, "HEAD_DIM": 128, "DIM": 128, "CHUNK": chunk, "PDL": pdl}
    if kernel == "combine":
        signature = {"ACC": "*fp32", "M": "*fp32", "L": "*fp32", "OUT": "*bf16", "POS": "*i64"}
        constants = {**shapes, "SPLITS": 98, "SPLITS_P2": 128, "SPLIT_BLOCK": attention.COMBINE_SPLITS,
                     "DIM_BLOCK": attention.COMBINE_DIMS}
    else:
        signature = {name: "*bf16" for name in ("Q", "K", "V", "KNEW", "VNEW", "COS", "SIN")}
        signature.update({"POS": "*i64", "ACC": "*fp32", "M": "*fp32", "L": "*fp32", "COUNT": "*i32", "OUT": "*bf16",
                          "stride_kh": "i64", "stride_kn": "i64", "positions_total": "i32", "scale": "fp32"})
        constants = {**shapes, "BLOCK": attention.BLOCK_N, "SPLITS": 98, "ROPE": rope, "FUSED": fused,
                     "GROUP_P2": 8, "FUSED_SPLITS": attention.FUSED_SPLITS}
    signature.update(dict.fromkeys(constants, "constexpr"))
    function = attention._kernels()[kernel == "combine"]
    return ptx_for_sm90(function, {name: signature[name] for name in function.arg_names}, constants)

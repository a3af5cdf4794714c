"""Runtimes behind the Runner protocol: `lean` against `hf` on the same weights, and a whole-runtime
plugin (its own engine, its own runtime name, a wall-clock timer) run by `qbench compare`."""

import csv
import io
import json

import pytest
import torch
from click.testing import CliRunner

from qbench.api import LoadOptions, Runner, protocol_gaps
from qbench.cli import main
from qbench.registry import load_backend
from qbench.session.decode import token_stream
from qbench.specs import load_model_spec
from qbench.store import Store

CPU_BACKENDS = ["bf16", "torch-int4", "bnb-nf4"]


def _available(name: str) -> bool:
    from qbench.backend import DeviceInfo

    return load_backend(name).unavailable_reason(DeviceInfo("cpu", "cpu")) is None


def _agreement(spec, name: str, weights: str, group_size: int, prompt: list[int] | None = None):
    """(worst relative logit error, top-1 matches, steps) of lean against hf, same weights, 12 steps."""
    from qbench.runtimes.lean import LeanRunner

    backend = load_backend(name)
    options = LoadOptions(device="cpu", weights=weights, seed=0, max_cache_len=96, group_size=group_size)
    hf = backend.load(spec, options)
    lean = LeanRunner(hf.model, 96, "cpu")  # the very same modules and weights, lean's loop around them
    assert hf.runtime == "hf" and lean.runtime == "lean"
    assert isinstance(lean, Runner) and protocol_gaps(lean) == [] and protocol_gaps(hf) == []
    tokens = torch.tensor(prompt) if prompt else token_stream(spec.vocab_size, 72, 0, "cpu")
    worst, matches = 0.0, 0
    for got, want in [(lean.prefill(tokens[:60]), hf.prefill(tokens[:60]))] + [
        (lean.step(tokens[p : p + 1]), hf.step(tokens[p : p + 1])) for p in range(60, 71)
    ]:
        got, want = got.float(), want.float()
        worst = max(worst, ((got - want).norm() / want.norm()).item())
        matches += int(got.argmax() == want.argmax())
    assert lean.step_bytes(2048) == hf.step_bytes(2048)  # the same tensors, read by another loop
    return worst, matches, 12


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_lean_matches_hf_on_the_tiny_spec(name):
    if not _available(name):
        pytest.skip(f"{name} unavailable here")
    worst, matches, steps = _agreement(load_model_spec("tiny"), name, "synthetic", 128)
    assert worst < 0.03, worst  # bf16 rounding of another order of operations, no more
    assert matches >= steps - 1


@pytest.fixture(scope="module")
def smollm2_text(tmp_path_factory):
    """SmolLM2's packaged GGUF, the quality text's first 72 tokens (its tokenizer is built once for
    the backends), and a weights cache the backends share: the first load stores the file's
    dequantised tensors, the others read them (`build.load_gguf`), as a user's later sessions do."""
    from qbench.model.build import packaged_gguf
    from qbench.session.quality import load_tokenizer, text_tokens

    spec = load_model_spec("smollm2-135m")
    path = packaged_gguf(spec)
    tokenizer, why = load_tokenizer(spec, str(path))
    assert tokenizer is not None, why
    return spec, path, text_tokens(tokenizer)[:72], tmp_path_factory.mktemp("smollm2-cache")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_lean_matches_hf_on_smollm2_real_weights(name, smollm2_text, monkeypatch):
    if not _available(name):
        pytest.skip(f"{name} unavailable here")
    spec, path, prompt, cache = smollm2_text
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(cache))
    worst, matches, steps = _agreement(spec, name, str(path), 64, prompt=prompt)
    assert worst < 0.05, worst
    assert matches == steps  # real text: peaked logits


def test_lean_is_refused_where_a_sliding_window_would_apply():
    from qbench.runtimes.lean import LeanRunner

    spec = load_model_spec("tiny")
    model = load_backend("bf16").load(spec, LoadOptions(device="cpu", max_cache_len=16)).model
    model.config.sliding_window = 8
    with pytest.raises(RuntimeError, match="sliding-window"):
        LeanRunner(model, 16, "cpu")


ENGINE = '''
    import time
    import torch
    from qbench.api import Backend, StepBytes

    class ToyRunner:
        """A whole engine of its own: a bigram table, logits = table[token]; a step takes 20 ms."""
        runtime = "toy"
        timer = "wall"
        graphs = "none"
        device = torch.device("cpu")

        def __init__(self, vocab):
            self.notes = ["toy: a bigram table"]
            self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
            self.on_reference = False

        def prefill(self, tokens):
            return self.step(tokens[-1:])

        def step(self, token):
            time.sleep(0.02)
            logits = self.table[int(token)]
            return logits.double().float() if self.on_reference else logits.clone()

        def step_bytes(self, ctx):
            return StepBytes(self.table.numel() * 4, 0, 0, 0, 0, 0)

        def reference(self, on):
            self.on_reference = on

        def release_reference(self):
            pass

    class ToyEngine(Backend):
        name = "toy-engine"
        description = "a whole runtime from a plugin"
        runtimes = ("toy",)
        bits = 32

        def load(self, spec, options):
            return ToyRunner(spec.vocab_size)
'''


@pytest.fixture
def engine_dist(tmp_path, monkeypatch):
    import sys

    from conftest import install_plugin

    yield install_plugin(
        tmp_path / "site", monkeypatch, "qbench-toy", "qbench_toy", ENGINE, {"toy-engine": "ToyEngine"}
    )
    sys.modules.pop("qbench_toy", None)


COMPILED_OP = """
import sys, torch
import qbench.settings as settings
from qbench.runtimes.lean import compile_keyed
version, digest = sys.argv[1], sys.argv[2]
settings.measured_code_digest = lambda: digest  # the qbench that compiles, as its measured code
if version == "1":
    @torch.library.custom_op("qbench_test::f", mutates_args=())
    def f(x: torch.Tensor, k: int, norm: torch.Tensor | None = None) -> torch.Tensor:
        return x * k
    f.register_fake(lambda x, k, norm=None: torch.empty_like(x))
    step = lambda x: f(x + 1, 3, None) * 2
else:  # the op's next schema: an argument renamed, one added
    @torch.library.custom_op("qbench_test::f", mutates_args=())
    def f(x: torch.Tensor, k: int, rms: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
        return x * k
    f.register_fake(lambda x, k, rms=None, eps=0.0: torch.empty_like(x))
    step = lambda x: f(x + 1, 3, None, 0.0) * 2
print(compile_keyed(step)(torch.ones(4)).tolist())
"""


def test_a_step_compiled_by_other_measured_code_is_not_found_in_torchs_caches(tmp_path):
    """torch's on-disk compile caches do not key a graph by a custom op's schema: a step compiled
    with the op's former arguments was found after they changed and failed to call it (the H100,
    2026-12-07). lean's compile_keyed adds the measured code to the key: the second qbench compiles
    its own graph. Both in one cache folder, each in its own process as sessions are."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env.pop("TORCH_COMPILE_CACHE_KEY_TAG", None)

    def compiled(version: str, digest: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", COMPILED_OP, version, digest], env=env, capture_output=True,
                              text=True, timeout=600)

    first = compiled("1", "aaaa")
    assert first.returncode == 0 and first.stdout.strip() == "[12.0, 12.0, 12.0, 12.0]", first.stderr[-2000:]
    second = compiled("2", "bbbb")
    assert second.returncode == 0 and second.stdout.strip() == "[12.0, 12.0, 12.0, 12.0]", second.stderr[-2000:]


def test_a_whole_runtime_plugin_runs_through_the_protocol(engine_dist, tmp_path):
    args = ["compare", "--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "3", "--sessions", "1"]
    args += ["--backends", "bf16,toy-engine", "--runtimes", "hf,lean", "--db", str(tmp_path / "r.sqlite")]
    result = CliRunner().invoke(main, args + ["--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by = {(r["backend"], r["runtime"]): r for r in rows}
    assert set(by) == {("bf16", "hf"), ("bf16", "lean"), ("toy-engine", "toy")}  # the engine: its own runtime only
    toy = by[("toy-engine", "toy")]
    assert toy["status"] == "ok" and toy["bytes_per_step"] == 1024 * 1024 * 4  # the runner's own accounting
    assert toy["runtime_notes"] == ["toy: a bigram table"]
    store = Store(tmp_path / "r.sqlite", readonly=True)
    (session,) = [s for s in store.sessions() if s["config"]["backend"] == "toy-engine"]
    store.close()
    assert session["config"]["runtime"] == "toy"
    result = session["result"]
    assert result["timer"] == "wall" and result["graph_owner"] == "none"
    (block,) = result["blocks"]
    assert block["event_ms"] == [] and all(ms >= 20 for ms in block["wall_ms"])  # the wall clock brackets step()
    assert block["logit_check"]["top1_matches"] == 3
    assert by[("bf16", "lean")]["runtime_speedup"] > 0  # lean's row says how it compares with hf's
    exported = CliRunner().invoke(main, ["export", "--db", str(tmp_path / "r.sqlite"), "--format", "csv"])
    rows = {(r["backend"], r["runtime"]): r for r in csv.DictReader(io.StringIO(exported.stdout))}
    assert rows[("toy-engine", "toy")]["runtime_notes"] == "toy: a bigram table"
    assert rows[("bf16", "lean")]["runtime_notes"] == (
        "lean: decode attention: SDPA (the split-K kernel runs on CUDA) | "
        "lean: 16-bit linear layers: F.linear (the Triton GEMV runs on CUDA) | "
        "lean: step not compiled: torch.compile is used on CUDA only"
    )
    view = CliRunner().invoke(
        main, ["export", "--db", str(tmp_path / "r.sqlite"), "--view", "sessions", "--format", "md"]
    )
    per_cell = view.stdout.split("### per session")[0].splitlines()
    bf16_cells = [line.replace(" ", "") for line in per_cell if line.replace(" ", "").startswith("|tiny|bf16|")]
    assert sorted(line.split("|")[3] for line in bf16_cells) == ["hf", "lean"]  # one summary row per runtime


def test_runtimes_are_checked_before_anything_runs(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--model", "tiny", "--runtimes", "hf,vllm", "--db", "r.sqlite"])
    assert result.exit_code == 2
    assert "--runtimes must be one or more of hf, lean" in result.output
    assert not (tmp_path / "r.sqlite").exists()

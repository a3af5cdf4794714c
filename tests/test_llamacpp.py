"""The llama.cpp backends on the CPU (llama-cpp-python's CPU build): a synthetic GGUF written for the
tiny spec, quantised by llama.cpp, loaded, stepped and gated through `qbench compare`; the byte
accounting of each file it ran; the graphs A/B of a runtime that fixes graphs per process; and
`qbench backends` naming what is missing without llama-cpp-python. The SmolLM2 GGUF through the
real-weight gate and perplexity bound is in test_quality.py."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from qbench.backend import DeviceInfo
from qbench.cli import main
from qbench.compare import CompareConfig, plan, session_jobs
from qbench.report import aggregate

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="needs llama-cpp-python (pip install 'qbench-decode[llamacpp]')",
)
FAMILY = ("llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_0", "llamacpp-q4_k_m")


@needs_llama_cpp
def test_synthetic_gguf_quantised_loaded_stepped_and_gated(tmp_path, monkeypatch):
    import uuid

    from gguf import GGUFReader

    from qbench.formats.gguf_bytes import step_bytes
    from qbench.model.cache import Cache

    mark = uuid.uuid4().hex
    monkeypatch.setenv("QBENCH_TEST_MARK", mark)
    args = ["--model", "tiny", "--backends", ",".join(FAMILY), "--ctx", "64", "--steps", "8", "--sessions", "1"]
    result = CliRunner().invoke(main, ["compare", *args, "--db", "r.sqlite", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(FAMILY)
    types = {}
    for path in [entry.path for entry in Cache().entries() if entry.path.suffix == ".gguf"]:
        reader = GGUFReader(str(path))
        types[path] = {t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")}
    # llama.cpp's quantiser made each type from the written F16 file
    assert {"F16"} in types.values() and {"Q8_0"} in types.values() and {"Q4_0"} in types.values()
    assert {"Q4_K"} in types.values()
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("reason"))
        assert row["runtime"] == "llamacpp" and row["graphs"] == "off"
        assert any("llama.cpp" in note for note in row["runtime_notes"])
    # bytes per step are the file's own: Q4_0 reads 4.5/16 of F16's linear bytes, and realised x is
    # against the family's F16 baseline, not bf16 under transformers
    f16, q4 = rows["llamacpp-f16"], rows["llamacpp-q4_0"]
    assert f16["realised_speedup"] == 1 and q4["realised_speedup"] > 0
    assert q4["expected_reduction"] == pytest.approx(f16["bytes_per_step"] / q4["bytes_per_step"])
    by_type = {next(iter(t)): p for p, t in types.items()}
    assert f16["bytes_per_step"] == step_bytes(by_type["F16"], 64).total
    assert q4["bytes_per_step"] == step_bytes(by_type["Q4_0"], 64).total
    assert not engines_running(mark)  # llama.cpp's processes went with their sessions


def engines_running(mark: str) -> list[str]:
    """llama.cpp engine processes started under this test (they inherit its QBENCH_TEST_MARK),
    orphans included; other engines on the machine are not ours."""
    from pathlib import Path

    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            command = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environment = (folder / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "llamacpp_engine.py" in command and f"QBENCH_TEST_MARK={mark}".encode() in environment:
            found.append(command)
    return found


def test_a_runner_that_times_itself_must_say_how_long():
    from qbench.api import protocol_gaps

    class Engine:
        runtime, timer, graphs, device, notes = "engine", "runner", "none", None, []
        prefill = step = step_bytes = reference = release_reference = None

    assert protocol_gaps(Engine()) == ["last_step_ms (timer runner)"]
    Engine.last_step_ms = 1.0
    assert protocol_gaps(Engine()) == []


@needs_llama_cpp
def test_a_wrong_engine_is_reported_incorrect(monkeypatch):
    """The gate compares llama.cpp's logits with transformers on the dequantised GGUF: an engine that
    returns other logits gets no latency row."""
    import torch

    from qbench.backends import llamacpp

    real = llamacpp.LlamaCppRunner._tensor

    def shuffled(self, data):
        logits = real(self, data)
        return logits[torch.randperm(logits.numel(), generator=torch.Generator().manual_seed(0))]

    monkeypatch.setattr(llamacpp.LlamaCppRunner, "_tensor", shuffled)
    monkeypatch.setenv("QBENCH_FORKSERVER", "0")
    from qbench.session.run import SessionConfig, run_session

    result = run_session(SessionConfig(model="tiny", backend="llamacpp-q8_0", ctx=32, steps=6, runtime="llamacpp"))
    assert result["status"] == "ok"  # the session ran; its block is what the gate failed
    (block,) = result["blocks"]
    assert block["status"] == "incorrect", block


def test_each_graphs_setting_gets_its_own_process_and_the_rows_pair():
    device = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0), "GPU-x")
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python")
    config = CompareConfig(model="qwen2.5-7b", backends=("bf16", "llamacpp-q4_0"), graphs="both", sessions=2)
    the_plan = plan(config, device)
    jobs = [session.to_dict() for session, _ in session_jobs(the_plan)]
    graphs = {(s["backend"], s["session_index"]): [] for s in jobs}
    for session in jobs:
        graphs[(session["backend"], session["session_index"])].append(session["graphs"])
    assert graphs[("bf16", 0)] == [[False, True]]
    assert graphs[("llamacpp-q4_0", 0)] == [[False], [True]]

    def record(session, ms, graph_ms=None):
        blocks = [{"graphs": g, "status": "ok", "wall_ms": [ms if not g else graph_ms] * 4} for g in session["graphs"]]
        from qbench.compare import cell_hash

        return {
            "config": session,
            "gpu": "h100-sxm5",
            "run_id": "r",
            "cell_hash": cell_hash(session, device.name),
            "result": {"status": "ok", "blocks": blocks, "runtime": session["runtime"]},
        }

    records = [record(s, 10.0 + s["session_index"], 5.0) for s in jobs if s["backend"] == "llamacpp-q4_0"]
    rows = {(r["backend"], r["graphs"]): r for r in aggregate(records)}
    on = rows[("llamacpp-q4_0", "on")]
    assert on["graphs_speedup"] == pytest.approx(10.5 / 5.0)
    assert on["cell_hash"] != rows[("llamacpp-q4_0", "off")]["cell_hash"]


def test_backends_says_what_is_missing_without_llama_cpp(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    result = CliRunner().invoke(main, ["backends", "--format", "json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    for name in FAMILY:
        assert listed[name]["available"] is False
        assert listed[name]["why_not"] == "missing package llama-cpp-python: pip install 'qbench-decode[llamacpp]'"
        assert listed[name]["runtimes"] == "llamacpp"


def test_synthetic_weights_refused_where_no_gguf_can_be_written():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python")
    device = DeviceInfo("cpu", "cpu")
    the_plan = plan(CompareConfig(model="llama-3.1-8b", backends=("llamacpp-q4_0",), weights="synthetic"), device)
    assert the_plan.backends == []
    assert "rope scaling" in the_plan.skipped["llamacpp-q4_0"]

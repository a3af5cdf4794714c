"""The weights cache: a hit builds the same modules a fresh quantisation does; a torn file is rebuilt,
never loaded; two runs filling one entry at once both get correct weights; sessions say where their
time went."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from click.testing import CliRunner

from qbench.backend import DeviceInfo, LoadOptions
from qbench.backends.torch_int4 import TorchInt4Backend
from qbench.cli import main
from qbench.compare import CompareConfig, plan
from qbench.model.cache import Cache
from qbench.specs import load_model_spec


def quantised_digest(model) -> str:
    """A digest of every tensor the kernels read, in module order."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        if hasattr(module, "stored_tensors"):
            for tensor in module.stored_tensors():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(model: str = "tiny", cache: bool = True):
    options = LoadOptions(
        device="cpu", max_cache_len=64, weights_cache=cache, group_size=128 if model == "tiny" else 64
    )
    return TorchInt4Backend().load(load_model_spec(model), options)


def test_a_hit_builds_the_same_modules_and_a_torn_file_is_rebuilt_not_loaded():
    fresh = quantised_digest(load(cache=False).model)
    first = load()
    assert first.weights_cache == "stored" and quantised_digest(first.model) == fresh
    second = load()
    assert second.weights_cache == "hit" and quantised_digest(second.model) == fresh
    (entry,) = [e for e in Cache().entries() if e.about.get("what") == "weights"]
    entry.path.write_bytes(entry.path.read_bytes()[: entry.bytes // 2])  # torn: half the file
    assert [e.about["what"] for e in Cache().entries() if e.key == entry.key] == [
        "damaged: rebuilt by the next session that needs it"
    ]  # listed, not a crash
    third = load()
    assert third.weights_cache.startswith("stored; cached file was damaged and is rebuilt")
    assert quantised_digest(third.model) == fresh
    assert load().weights_cache == "hit"


def test_two_runs_filling_one_entry_at_once_both_get_correct_weights(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_cache import load, quantised_digest
        runner = load("smollm2-135m")
        print(runner.weights_cache, quantised_digest(runner.model))
        """
    )
    tests = str(Path(__file__).parent)
    runs = [
        subprocess.Popen([sys.executable, "-c", script, tests], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    fresh = quantised_digest(load("smollm2-135m", cache=False).model)
    assert [digest for _, digest in outputs] == [fresh, fresh]
    assert {status for status, _ in outputs} <= {"stored", "hit"}
    later = load("smollm2-135m")
    assert later.weights_cache == "hit" and quantised_digest(later.model) == fresh
    assert not list(Cache().folder.glob(".*.tmp"))  # no temporary file left behind


def test_the_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = Cache(tmp_path / "c", limit_bytes=3000)
    for key in ("a", "b", "c"):
        assert cache.store(key, {"x": torch.zeros(250)}, {"what": key}) == ""  # 1000 bytes + header each
    kept = {e.key for e in cache.entries()}
    assert "c" in kept and len(kept) < 3 and sum(e.bytes for e in cache.entries()) <= 3000
    assert "exceeds" in cache.store("big", {"x": torch.zeros(10_000)}, {})


def test_sessions_store_their_phases_and_later_sessions_read_the_cache(tmp_path):
    args = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--backends", "bf16,torch-int4"]
    result = CliRunner().invoke(main, ["compare", *args, "--sessions", "2", "--db", "r.sqlite"])
    assert result.exit_code == 0, result.output
    view = CliRunner().invoke(main, ["export", "--db", "r.sqlite", "--view", "sessions", "--format", "json"])
    rows = json.loads(view.stdout)
    assert len(rows) == 4
    for row in rows:
        phases = [row[key] for key in ("start_s", "imports_s", "provenance_s", "load_s", "gate_s", "timed_s")]
        assert all(value is not None and value >= 0 for value in phases)
        assert abs(sum(phases) + row["prepare_s"] + row["profile_s"] + row["rest_s"] - row["total_s"]) < 0.01
        assert row["beyond_timed_s"] == round(row["total_s"] - row["timed_s"], 3)
    int4 = sorted((r for r in rows if r["backend"] == "torch-int4"), key=lambda r: r["session"])
    assert [r["weights_cache"] for r in int4] == ["stored", "hit"]
    listed = CliRunner().invoke(main, ["cache", "--format", "json"])
    assert any("torch-int4" in entry["what"] for entry in json.loads(listed.stdout))
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and Cache().entries() == []


def test_a_first_look_runs_few_sessions_and_an_explicit_run_keeps_ten():
    h100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
    assert plan(CompareConfig(model="tiny", backends=("bf16",), quick=True), h100).sessions == 3
    assert plan(CompareConfig(model="tiny", backends=("bf16",)), h100).sessions == 10
    assert plan(CompareConfig(model="tiny", backends=("bf16",), quick=True, sessions=5), h100).sessions == 5
    assert plan(CompareConfig(model="tiny", backends=("bf16",), quick=True), DeviceInfo("cpu", "cpu")).sessions == 1


def test_the_quality_texts_ids_are_tokenized_once_per_tokenizer_file(tmp_path, monkeypatch):
    """A real-weight session reads the quality text's token ids from the weights cache where an earlier
    one made them with the same tokenizer files (a GGUF's tokenizer takes seconds to build); a
    tokenizer file that changes makes them again; a folder without one loads nothing."""
    from types import SimpleNamespace

    from qbench.session import quality

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    loads = []

    def loader(shift):
        def load_tokenizer(spec, weights):
            loads.append(weights)
            return (lambda text: SimpleNamespace(input_ids=[len(word) + shift for word in text.split()])), None

        return load_tokenizer

    monkeypatch.setattr(quality, "load_tokenizer", loader(0))
    spec = load_model_spec("tiny")
    want = [len(word) for word in quality.quality_text().split()][: quality.MAX_TOKENS]
    assert quality.text_ids(spec, str(folder)) == (want, None) and len(loads) == 1
    assert quality.text_ids(spec, str(folder)) == (want, None) and len(loads) == 1  # read back, not tokenized
    monkeypatch.setattr(quality, "load_tokenizer", loader(1))
    (folder / "tokenizer.json").write_text('{"changed": true}')
    assert quality.text_ids(spec, str(folder)) == ([n + 1 for n in want], None) and len(loads) == 2
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    ids, why = quality.text_ids(spec, str(empty))
    assert ids is None and "no tokenizer" in why and len(loads) == 2

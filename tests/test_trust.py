"""Every bad input is one line and exit 2 before anything runs or is written; read-only commands change
no file; plugins cannot replace built-ins or break a default run; the top-1 threshold counts steps."""

import hashlib
import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from conftest import install_plugin

from qbench.backend import DeviceInfo
from qbench.cli import main
from qbench.compare import CompareConfig, plan
from qbench.errors import UserError
from qbench.registry import load_backend, warnings
from qbench.session.gate import compare_logits
from qbench.specs import load_model_spec

CPU = DeviceInfo("cpu", "cpu")


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_folder(tmp_path, name="ckpt", config_text=None):
    folder = tmp_path / name
    folder.mkdir()
    config = config_text or json.dumps(load_model_spec("tiny").hf_config)
    (folder / "config.json").write_text(config)
    return folder


def tiny_gguf(path, truncate_by=0):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("weight", np.arange(4096, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if truncate_by:
        data = path.read_bytes()
        path.write_bytes(data[:-truncate_by])
    return path


def bad_inputs(tmp_path):
    """(arguments, what the one line must say) for each bad input the trust issue lists, and more."""
    not_json = tiny_folder(tmp_path, "not-json", config_text='{"hidden_size": 256,')
    cut = tiny_folder(tmp_path, "cut")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(4096)}, str(cut / "model.safetensors"))
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:-1000])
    noise = tiny_folder(tmp_path, "noise")
    (noise / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    cut_gguf = tiny_gguf(tmp_path / "cut.gguf", truncate_by=1000)
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"not a gguf at all" * 100)
    text_db = tmp_path / "notes.txt"
    text_db.write_text("my notes\n")
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    fast = ["--ctx", "16", "--steps", "2", "--warmup", "1", "--backends", "bf16", "--db", str(tmp_path / "r.sqlite")]
    compare = ["compare", "--model", "tiny", "--ctx", "16", "--steps", "2", "--backends", "bf16"]
    return [
        (["compare", "--model", str(not_json), *fast], "is not valid JSON (line 1"),
        (["floor", "--model", str(not_json)], "is not valid JSON (line 1"),
        (["compare", "--model", "", *fast], "--model is empty"),
        (["floor", "--ctx=-5"], "--ctx must be positive"),
        (["compare", "--model", "tiny", *fast[2:], "--ctx", "100000"], "tiny has 4096 (max_position_embeddings)"),
        (["floor", "--model", "tiny", "--ctx", "5000"], "tiny has 4096"),
        (["compare", "--model", "tiny", *fast, "--weights", "synthetc"], "did you mean synthetic"),
        (["compare", "--model", "tiny", *fast, "--weights", str(tmp_path / "gone")], "nor an existing path"),
        (["compare", "--model", str(cut), *fast], "model.safetensors is truncated"),
        (["compare", "--model", str(noise), *fast], "is not a safetensors file"),
        (["compare", "--model", "tiny", *fast, "--weights", str(cut_gguf)], "cut.gguf is truncated"),
        (["compare", "--model", "tiny", *fast, "--weights", str(fake_gguf)], "is not a GGUF file"),
        ([*compare, "--db", str(text_db)], "notes.txt is not a SQLite database"),
        ([*compare, "--db", str(foreign)], "is another program's SQLite database"),
        ([*compare, "--db", "/proc/qbench-results.sqlite"], "cannot write results to /proc/qbench-results.sqlite"),
        (["plot", "--db", str(foreign), "--out", str(tmp_path / "x.xyz")], "the format is taken from the suffix"),
        (["floor", "--model", "smollm2-135m", "--backend", "torch-int4", "--group-size", "128"], "does not divide"),
        (["floor", "--group-size", "100"], "--group-size must be one of"),
        (["compare", "--model", "tiny", *fast, "--cpu", "99"], "--cpu must be off, auto or one of"),
        (["compare", "--model", "tiny", *fast, "--backends", ","], "--backends must be"),
    ], [text_db, foreign]


def test_each_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    cases, untouchable = bad_inputs(tmp_path)
    before = {path: digest(path) for path in untouchable}
    for args, message in cases:
        result = invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("qbench: error: "), (args, result.output)
        assert message in lines[0], (args, lines[0])
    assert not (tmp_path / "r.sqlite").exists()  # nothing written for any of them
    assert {path: digest(path) for path in untouchable} == before


def test_read_only_commands_change_no_file(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for path, message in ((foreign, "not a qbench results store"), (empty, "is empty")):
        before, listing = digest(path), sorted(p.name for p in tmp_path.iterdir())
        for command in (["export"], ["export", "--format", "csv"]):
            result = invoke(*command, "--db", str(path))
            assert result.exit_code == 2 and message in result.output, result.output
        assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == listing


def test_export_reads_a_store_without_writing_it(tmp_path):
    from qbench.store import Store

    path = tmp_path / "results.sqlite"
    store = Store(path)
    run = store.new_run("qbench compare", {})
    config = {"model": "tiny", "backend": "bf16", "ctx": 16, "session_index": 0, "graphs": [False], "device": "cpu"}
    config["weights"] = "synthetic"
    result = {"status": "ok", "reason": "", "blocks": [{"graphs": False, "status": "ok", "wall_ms": [1.0, 1.1]}]}
    store.add_session(run, "cell", config, "cpu", result)
    store.close()
    before, listing = digest(path), sorted(p.name for p in tmp_path.iterdir())
    exported = invoke("export", "--db", str(path), "--format", "json")
    assert exported.exit_code == 0 and json.loads(exported.stdout)[0]["ms_per_step"] == pytest.approx(1.05)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no -shm or -wal files appear beside it


def test_a_folder_checkpoint_is_measured_with_its_own_weights_and_no_tokenizer_is_a_note(tmp_path):
    from safetensors.torch import save_file

    from qbench.backend import LoadOptions
    from qbench.model.build import build_model

    folder = tiny_folder(tmp_path)
    model, _ = build_model(load_model_spec("tiny"), LoadOptions(device="cpu", seed=5), dtype="bfloat16")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    args = ["--model", str(folder), "--ctx", "16", "--steps", "3", "--warmup", "1", "--backends", "bf16"]
    result = invoke("compare", *args, "--db", str(tmp_path / "r.sqlite"))
    assert result.exit_code == 0, result.output
    assert f"real weights from {folder}" in result.output  # the title says what was measured
    assert "perplexity will be skipped: no tokenizer" in result.output
    assert "ok" in result.output


def test_no_successful_session_exits_1(plugin_dist, tmp_path):
    result = invoke("compare", "--model", "tiny", "--ctx", "16", "--steps", "2", "--backends", "fake-segv")
    assert result.exit_code == 1, result.output
    assert "SIGSEGV" in result.output and "no session succeeded" in result.output


def test_agreement_counts_steps_exactly_at_the_threshold():
    torch.manual_seed(0)
    reference = torch.randn(30, 64, dtype=torch.float32)
    logits = reference.clone()

    def flip(row: int) -> None:  # the runner-up overtakes the top logit: argmax changes, error stays small
        top2 = reference[row].topk(2)
        logits[row, top2.indices[0]] = top2.values[1] - 0.01

    for row in range(3):  # 27 of 30 steps agree: exactly 90%, which a float32 mean calls 0.89999998
        flip(row)
    check = compare_logits(logits, reference, weights="real")
    assert (check.top1_matches, check.steps) == (27, 30) and check.worst_relative_error < 0.25
    assert check.passed
    flip(3)  # 26 of 30 fails, and says so in counts
    failing = compare_logits(logits, reference, weights="real")
    assert not failing.passed and "26/30" in failing.failure()


def test_a_plugin_cannot_replace_a_built_in(tmp_path, monkeypatch):
    source = """
        from qbench.backends.bf16 import Bf16Backend
        class Impostor(Bf16Backend):
            description = "not the real baseline"
    """
    install_plugin(tmp_path / "site", monkeypatch, "qbench-impostor", "qbench_impostor", source, {"bf16": "Impostor"})
    assert type(load_backend("bf16")).__module__ == "qbench.backends.bf16"
    (warning,) = [w for w in warnings() if "qbench-impostor" in w]
    assert "'bf16'" in warning and "ignored" in warning
    listed = invoke("backends", "--format", "json")
    assert "qbench-impostor" in listed.output


def test_two_plugins_claiming_one_name_are_an_error_naming_both(tmp_path, monkeypatch):
    source = """
        from qbench.backends.bf16 import Bf16Backend
        class Same(Bf16Backend):
            name = "same"
    """
    install_plugin(tmp_path / "a", monkeypatch, "qbench-first", "qbench_first", source, {"same": "Same"})
    install_plugin(tmp_path / "b", monkeypatch, "qbench-second", "qbench_second", source, {"same": "Same"})
    with pytest.raises(UserError, match="registered by both") as error:
        load_backend("same")
    assert "qbench-first" in str(error.value) and "qbench-second" in str(error.value)


def test_a_broken_plugin_does_not_break_a_default_compare(tmp_path, monkeypatch):
    source = """
        raise ImportError("libfancy.so.3: cannot open shared object file")
    """
    install_plugin(tmp_path / "site", monkeypatch, "qbench-broken", "qbench_broken", source, {"fancy-int3": "X"})
    the_plan = plan(CompareConfig(model="tiny"), CPU)
    assert "bf16" in the_plan.backends
    assert "libfancy.so.3" in the_plan.skipped["fancy-int3"] and "qbench-broken" in the_plan.skipped["fancy-int3"]
    listed = {d["name"]: d for d in json.loads(invoke("backends", "--format", "json").stdout)}
    assert not listed["fancy-int3"]["available"] and "failed to import" in listed["fancy-int3"]["why_not"]
    with pytest.raises(UserError, match="failed to import"):  # asked for by name: an error, before any session
        plan(CompareConfig(model="tiny", backends=("fancy-int3",)), CPU)

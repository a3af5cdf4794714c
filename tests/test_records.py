"""Typed session records (qbench.records): checked on construction, round-tripped with a schema
version, and every store today's and earlier qbench wrote still reads, keys and exports as it did."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import kept_results

from qbench.cli import main
from qbench.records import SCHEMA_VERSION, SessionConfig, SessionResult, migrate
from qbench.store import Store

ROOT = Path(__file__).resolve().parent.parent


STORES = [path for path in kept_results() if path.suffix == ".sqlite"]
GOLDEN = Path(__file__).parent / "golden"


def _copy(store: Path, tmp_path: Path) -> Path:
    """A copy of a committed store: no test opens the committed file itself."""
    copy = tmp_path / store.name
    shutil.copyfile(store, copy)
    return copy


def test_the_committed_stores_are_there():
    assert len(STORES) >= 30


@pytest.mark.parametrize("store", STORES, ids=[str(s.relative_to(ROOT / "results")) for s in STORES])
def test_every_committed_store_reads_into_records_and_keeps_its_keys(store, tmp_path, capsys):
    copy = _copy(store, tmp_path)
    raw = sqlite3.connect(copy)
    rows = raw.execute("SELECT id, config_json, result_json, cell_hash FROM sessions ORDER BY id").fetchall()
    raw.close()
    opened = Store(copy, readonly=True)
    records = opened.records()
    sessions = opened.sessions()
    opened.close()
    assert "damaged" not in capsys.readouterr().err
    assert [r[0] for r in records] == [row[0] for row in rows]
    for (session_id, config_json, result_json, cell), (_, config, result), record in zip(
        rows, records, sessions, strict=True
    ):
        assert isinstance(config, SessionConfig) and isinstance(result, SessionResult)
        # readers see the row as it was stored; the typed record has what the worker ran under
        # (less the schema version today's qbench stamps on a row: an envelope, not a setting)
        stored_config = {k: v for k, v in json.loads(config_json).items() if k != "schema_version"}
        stored_result = {k: v for k, v in json.loads(result_json).items() if k != "schema_version"}
        assert record["config"] == stored_config and record["result"] == stored_result
        assert config.runtime and config.measure_settings is not None
        if result.provenance:  # a session that ran: its key is the one it was stored under
            assert config.cell_key(result.provenance["device"]) == cell, session_id


@pytest.mark.parametrize(
    ("store", "args", "golden"),
    [
        ("h100/compare-qwen2.5-7b-ctx2048.sqlite", ["--format", "csv"], "compare-qwen2.5-7b-ctx2048.csv"),
        ("h100/runtimes/runtimes.sqlite", ["--format", "json", "--view", "sessions"], "runtimes-sessions.json"),
    ],
)
def test_a_committed_store_exports_byte_for_byte_as_before_records(store, args, golden, tmp_path):
    """The golden files are the export of the qbench before records (commit 6bed12f); since then, with
    compare --vary, the CSV gained the vs_base_x interval's three columns and the sessions view a
    row's `switched` (empty and null in every row of these stores, measured before qbench kept the
    switches); nothing else changed."""
    copy = _copy(ROOT / "results" / store, tmp_path)
    out = CliRunner().invoke(main, ["export", "--db", str(copy), "--run", "all", *args])
    assert out.exit_code == 0, out.output
    assert out.stdout == (GOLDEN / golden).read_text()


def test_a_config_round_trips_with_its_schema_version_and_keys_as_before():
    config = SessionConfig(model="tiny", backend="bf16", ctx=16, graphs=(False, True), qbench_version="0.1.0")
    stored = json.loads(config.to_json())
    assert stored["schema_version"] == SCHEMA_VERSION and stored["graphs"] == [False, True]
    assert SessionConfig.from_json(config.to_json()) == config
    # the key every earlier qbench computed: sha256 of the sorted JSON of all but the index, plus the device
    import hashlib

    key = {k: v for k, v in stored.items() if k not in ("session_index", "schema_version")}
    key["device_name"] = "cpu"
    assert config.cell_key("cpu") == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def test_an_older_row_migrates_in_one_place():
    old = {"model": "m", "backend": "bf16", "ctx": 8, "device": "cpu", "graphs": [False], "warmup": 1, "steps": 2}
    old.update(weights="synthetic", group_size=64, seed=0, session_index=0)
    config, result = migrate(old, {"status": "ok", "reason": "", "blocks": []})
    assert config.runtime == "hf" and config.rounds == 1 and config.cpu == "off" and config.measured_code == ""
    assert set(config.not_stored) == {"runtime", "rounds", "cpu", "measure_settings", "qbench_version", "measured_code"}
    assert config.to_dict() == old  # read back as it was stored
    assert result.to_dict() == {"status": "ok", "reason": "", "blocks": []}


def test_a_result_round_trips_with_its_schema_version():
    result = SessionResult(status="ok", blocks=[{"status": "ok"}], provenance={"device": "cpu"}, load_s=0.5)
    stored = json.loads(result.to_json())
    assert stored["schema_version"] == SCHEMA_VERSION and "label" not in stored
    assert SessionResult.from_json(result.to_json()) == result


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SessionConfig(model="tiny", backend="bf16", ctx=0), "SessionConfig.ctx"),
        (lambda: SessionConfig(model="", backend="bf16", ctx=8), "SessionConfig.model"),
        (lambda: SessionConfig(model="m", backend="bf16", ctx=8, steps=True), "SessionConfig.steps"),
        (lambda: SessionConfig(model="m", backend="bf16", ctx=8, graphs=[False]), "SessionConfig.graphs"),
        (lambda: SessionConfig(model="m", backend="bf16", ctx=8, measure_settings={"A": 1}), "measure_settings"),
        (lambda: SessionResult(status="fine"), "SessionResult.status"),
        (lambda: SessionResult(status="ok", load_s="1"), "SessionResult.load_s"),
        (lambda: SessionResult(status="ok", blocks=[1]), "SessionResult.blocks"),
        (lambda: SessionConfig.from_dict({"model": "m", "backend": "b", "ctx": 1, "bogus": 1}), "bogus"),
        (lambda: SessionResult.from_dict({"status": "ok", "schema_version": SCHEMA_VERSION + 1}), "schema version"),
    ],
)
def test_a_bad_record_names_its_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_a_row_that_is_not_a_record_is_left_out_with_a_note(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    run = store.new_run("qbench compare", {})
    store.add_session(run, "c", SessionConfig(model="m", backend="bf16", ctx=8), "cpu", SessionResult(status="ok"))
    store.db.execute("INSERT INTO sessions (run_id, cell_hash, model, gpu, backend, ctx, session_index, status,"
                     " reason, config_json, result_json, created_at) SELECT run_id, cell_hash, model, gpu, backend,"
                     " ctx, session_index, status, reason, config_json, '{\"status\": \"weird\"}', created_at"
                     " FROM sessions")  # fmt: skip
    store.db.commit()
    (kept,) = store.sessions()
    assert kept["result"] == {"status": "ok", "reason": "", "blocks": []}
    assert "session 2 is damaged (SessionResult.status must be one of" in capsys.readouterr().err
    stored = json.loads(store.db.execute("SELECT config_json FROM sessions WHERE id = 1").fetchone()[0])
    assert stored["schema_version"] == SCHEMA_VERSION
    store.close()

"""Nothing lost, nothing overwritten: output files never land on a store and are written whole,
--resume reruns what the machine spoiled, a damaged row costs itself only, a read-only open creates
no file, and a session that the store cannot take (a full disk) is kept for --resume."""

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.backend import DeviceInfo
from qbench.cli import main
from qbench.compare import CompareConfig, plan, session_jobs, stored_for_resume, stored_session
from qbench.errors import UserError
from qbench.store import Store

RESULTS = Path(__file__).resolve().parent.parent / "results" / "h100"
COMPARE = RESULTS / "compare-bf16-qwen2.5-7b-ctx2048.sqlite"  # a small committed store (2 runs)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, words: str) -> None:
    """Exit 2 and one error line, the last (a compare prints its progress before it)."""
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[-1].startswith("qbench: error: ") and result.output.count("qbench: error") == 1, result.output
    assert words in lines[-1] and "Traceback" not in result.output


@pytest.fixture
def base(tmp_path) -> Path:
    path = tmp_path / "base.sqlite"
    shutil.copyfile(COMPARE, path)
    return path


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.is_file()}


# ---- item 1: an output path is never a store --------------------------------------------------
def test_no_output_command_writes_onto_a_store(base, tmp_path):
    shutil.copyfile(COMPARE, tmp_path / "other.sqlite")
    shutil.copyfile(COMPARE, tmp_path / "other.md")  # a store, whatever its name
    (tmp_path / "link.md").symlink_to(base)
    before = folder(base)
    for out in ("base.sqlite", "./sub/../base.sqlite", "base.sqlite-wal", "base.sqlite-shm", "link.md"):
        one_line_error(invoke("export", "--db", base, "--out", tmp_path / out), "writing it would destroy results")
    for out in ("other.sqlite", "other.md", "other.sqlite-journal"):
        one_line_error(invoke("export", "--db", base, "--out", tmp_path / out), "a qbench results store")
    one_line_error(invoke("report", "--db", base, "--out", tmp_path / "other.md"), "a qbench results store")
    one_line_error(invoke("plot", "--db", base, "--out", tmp_path / "base.sqlite-shm"), "the shm file of")
    assert folder(base) == before  # nothing written, nothing created


def test_export_out_failures_are_one_line_and_keep_the_old_file(base, tmp_path, monkeypatch):
    one_line_error(invoke("export", "--db", base, "--out", "/dev/full"), "No space left on device")
    one_line_error(invoke("export", "--db", base, "--out", base / "x.md"), "is a file, not a folder")
    one_line_error(invoke("export", "--db", base, "--out", "/proc/qbench-no-such.md"), "cannot write --out")
    old = tmp_path / "table.md"
    old.write_text("the previous export\n")

    def full(self, text, *args, **kwargs):  # the disk fills half-way through the write
        with open(self, "w") as file:
            file.write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    one_line_error(invoke("export", "--db", base, "--out", old), "No space left on device")
    monkeypatch.undo()
    assert old.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.sqlite", "table.md"]  # no temporary left
    assert invoke("export", "--db", base, "--out", old).exit_code == 0 and "| backend" in old.read_text()


def test_report_and_plot_write_whole(tmp_path):
    store = tmp_path / "r.sqlite"
    shutil.copyfile(COMPARE, store)
    assert invoke("report", "--db", store, "--out", tmp_path / "r.html").exit_code == 0
    assert invoke("plot", "--db", store, "--run", "all", "--out", tmp_path / "r.png").exit_code == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.png", "r.sqlite"]


# ---- item 7: --resume reruns what the machine spoiled, keeps measurements and verdicts -------------
def test_resume_reruns_every_status_but_ok_and_incorrect(tmp_path):
    statuses = ["failed", "crashed", "timeout", "interrupted", "oom", "unavailable", "incorrect", "ok"]
    config = CompareConfig(model="tiny", backends=("bf16",), ctx=(16,), sessions=2, db=str(tmp_path / "s.sqlite"))
    the_plan = plan(config, DeviceInfo("cpu", "cpu"))
    jobs = session_jobs(the_plan)
    store = Store(config.db)
    run = store.new_run("test", {})
    kept = {}
    for status in statuses:
        session, cell = jobs[0]
        kept[status] = store.add_session(run, cell, session, "cpu", {"status": status, "reason": "", "blocks": []})
    stored = stored_for_resume(store, jobs, True)
    assert [stored_session(stored, s, c) for s, c in jobs] == [kept["incorrect"], kept["ok"]]
    store.close()


# ---- item 8: a damaged row costs itself only; an unversioned store is refused; no -shm appears ------
def test_a_damaged_row_is_left_out_with_a_note(base, capfd):
    db = sqlite3.connect(base)
    first, second, third = (r[0] for r in db.execute("SELECT id FROM sessions ORDER BY id LIMIT 3"))
    # a flipped byte: config_json no longer UTF-8; result_json that does not parse; the rest intact
    flipped = "CAST(substr(CAST(config_json AS BLOB), 1, 10) || X'FF' || substr(CAST(config_json AS BLOB), 12) AS TEXT)"
    db.execute(f"UPDATE sessions SET config_json = {flipped} WHERE id = ?", (first,))
    db.execute("UPDATE sessions SET result_json = substr(result_json, 2) WHERE id = ?", (second,))
    db.commit()
    total = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    db.close()
    capfd.readouterr()
    store = Store(base, readonly=True)
    ids = [s["id"] for s in store.sessions()]
    assert third in ids and first not in ids and second not in ids and len(ids) == total - 2
    cell = store.db.execute("SELECT cell_hash FROM sessions WHERE id = ?", (first,)).fetchone()[0]
    assert first not in store.completed_session_ids(cell)  # --resume runs a damaged session again
    store.close()
    notes = capfd.readouterr().err
    assert f"session {first} is damaged (its config_json is not UTF-8 text)" in notes
    assert f"session {second} is damaged (its result_json does not parse" in notes
    for args in (["export", "--run", "all"], ["report", "--out", base.parent / "r.md"]):
        result = invoke(*args, "--db", base)
        assert result.exit_code == 0, result.output
        assert f"session {first} is damaged" in result.stderr


@pytest.mark.parametrize("meta", ["DELETE FROM meta", "UPDATE meta SET value = '0'"])
def test_compare_refuses_an_unversioned_store(base, meta):
    db = sqlite3.connect(base)
    db.execute(meta)
    db.commit()
    db.close()
    before = folder(base)
    with pytest.raises(UserError, match="schema version"):
        Store(base)
    assert folder(base) == before  # not re-stamped
    result = invoke("compare", "--model", "tiny", "--backends", "bf16", "--ctx", "16", "--db", base)
    one_line_error(result, "schema version")


def test_reading_a_store_with_a_wal_and_no_shm_creates_no_file(base):
    code = (
        "import os, sqlite3\n"
        "db = sqlite3.connect('base.sqlite')\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('INSERT INTO sessions (run_id, cell_hash, model, gpu, backend, ctx, session_index, status,"
        " reason, config_json, result_json, created_at) SELECT run_id, cell_hash, model, gpu, backend, ctx,"
        " session_index + 100, status, reason, config_json, result_json, created_at FROM sessions LIMIT 1')\n"
        "db.commit()\n"
        "os._exit(0)\n"  # killed: the new session is in the -wal only
    )
    db = sqlite3.connect(base)
    stored = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    db.close()
    subprocess.run([sys.executable, "-c", code], cwd=base.parent, check=True)
    (base.parent / "base.sqlite-shm").unlink()
    before = folder(base)
    assert sorted(before) == ["base.sqlite", "base.sqlite-wal"]
    store = Store(base, readonly=True)
    sessions = store.sessions()
    store.close()
    assert max(s["id"] for s in sessions) == len(sessions) == stored + 1  # the -wal's session is read
    assert invoke("export", "--db", base, "--run", "all").exit_code == 0
    assert folder(base) == before


# ---- item 9: a session the store cannot take is kept, and --resume stores it ----------------------
def test_a_full_store_keeps_the_session_and_resume_stores_it(tmp_path, monkeypatch):
    args = ["compare", "--model", "tiny", "--backends", "bf16", "--ctx", "16", "--warmup", "1", "--steps", "2"]
    args += ["--sessions", "2", "--db", "r.sqlite"]
    monkeypatch.setattr(sys, "argv", ["qbench", *args])

    def full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "add_session", full)
        result = invoke(*args)
    one_line_error(result, "database or disk is full")
    kept = list((tmp_path / "r.sqlite.pending").glob("session-*.json"))
    assert (
        len(kept) == 1
        and "could not store bf16 ctx 16 session 1/2 in r.sqlite (database or disk is full)" in result.output
    )
    assert f"its result is kept in r.sqlite.pending/{kept[0].name}" in result.output
    assert f"free space), run: qbench {' '.join(args)} --resume (stores the kept result, not" in result.output

    monkeypatch.setattr(sys, "argv", ["qbench", *args, "--resume"])
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "stored 1 session result(s) kept in" in resumed.stderr
    assert resumed.stderr.count("already stored, skipped (--resume)") == 1  # the kept one
    assert not (tmp_path / "r.sqlite.pending").exists()
    store = Store(tmp_path / "r.sqlite", readonly=True)
    sessions = store.sessions()
    store.close()
    assert sorted(s["config"]["session_index"] for s in sessions) == [0, 1]
    assert all(s["result"]["status"] == "ok" for s in sessions)

"""The cell key holds everything that changes a measurement: the lean switches and qbench's version
(with its measured code); a stored session keeps the datasheet bandwidth its floor used."""

import csv
import io
import json
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner

from qbench import compare, report, settings
from qbench import plan as planning
from qbench.analysis import aggregate as aggregation
from qbench.backend import DeviceInfo
from qbench.cli import main
from qbench.compare import CompareConfig, cell_hash, plan, session_jobs
from qbench.errors import UserError
from qbench.records import SessionResult
from qbench.report import aggregate, render
from qbench.session.run import SessionConfig
from qbench.specs import load_gpu_spec
from qbench.store import Store

CPU = DeviceInfo("cpu", "cpu")
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
TINY = CompareConfig(model="tiny", backends=("bf16",), runtimes=("lean",), ctx=(16,), sessions=1, warmup=1, steps=2)


@pytest.fixture(autouse=True)
def default_switches(monkeypatch):
    for variable in settings.MEASURE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def hashes(config=TINY, device=CPU) -> list[str]:
    return [cell for _, cell in session_jobs(plan(config, device))]


def test_a_lean_switch_and_the_version_are_part_of_the_cell_key(monkeypatch):
    default = hashes()
    monkeypatch.setenv("QBENCH_LEAN_GEMV", "cublas")
    switched = hashes()
    (session, _), *_ = session_jobs(plan(TINY, CPU))
    assert session.measure_settings["QBENCH_LEAN_GEMV"] == "cublas"
    assert session.qbench_version and len(session.measured_code) == 16
    monkeypatch.delenv("QBENCH_LEAN_GEMV")
    monkeypatch.setattr(planning, "__version__", "99.0")
    other_version = hashes()
    monkeypatch.undo()
    monkeypatch.setattr(settings, "measured_code_digest", lambda: "0" * 16)
    other_code = hashes()
    assert len({tuple(default), tuple(switched), tuple(other_version), tuple(other_code)}) == 4


def _record(config: dict, ms: float, run_id: str = "r1", peak: dict | None = None) -> dict:
    steps = [ms] * 5
    result = {
        "status": "ok",
        "reason": "",
        "label": config["backend"],
        "kernel": "k",
        "bytes": {"total": 6_700_000_000},  # 2 ms at the H100 SXM5's 3350 GB/s
        "provenance": {},
        "blocks": [{"graphs": config["graphs"][0], "status": "ok", "reason": "", "event_ms": steps, "wall_ms": steps}],
        **(peak or {}),
    }
    gpu = "h100-sxm5"
    return {"config": config, "result": result, "gpu": gpu, "run_id": run_id, "cell_hash": cell_hash(config, gpu)}


def _config(**changes) -> dict:
    the_plan = plan(replace(TINY, graphs="on"), H100)
    session = compare.session_config(the_plan, "bf16", 16, 0, "lean").to_dict()
    session.update(changes)
    return session


def test_sessions_under_other_switches_or_versions_never_pool():
    base = _config()
    gemv = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_GEMV": "cublas"})
    version = _config(qbench_version="99.0")
    rows = aggregate([_record(base, 1.0), _record(gemv, 2.0), _record(version, 3.0)])
    assert sorted(r["ms_per_step"] for r in rows) == [1.0, 2.0, 3.0]
    assert all(r["sessions"] == "1/1" for r in rows)
    by_ms = {r["ms_per_step"]: r for r in rows}
    assert "QBENCH_LEAN_GEMV=cublas" in by_ms[2.0]["measure_settings"]
    assert "QBENCH_LEAN_GEMV=auto" in by_ms[1.0]["measure_settings"]
    assert by_ms[3.0]["qbench_version"] == "99.0"
    exported = {float(r["ms_per_step"]): r for r in csv.DictReader(io.StringIO(render(rows, "csv")))}
    assert exported[2.0]["measure_settings"].startswith("QBENCH_LEAN_GEMV=cublas")
    assert exported[3.0]["qbench_version"] == "99.0"
    assert json.loads(render(rows, "json"))[0]["measured_code"] == base["measured_code"]
    assert "measured by qbench 99.0" in render(rows, "md")


def test_a_stored_floor_does_not_move_when_the_spec_is_edited(tmp_path, monkeypatch):
    the_plan = plan(replace(TINY, graphs="on", db=str(tmp_path / "f.sqlite")), H100)
    (session, cell), *_ = session_jobs(the_plan)
    store = Store(the_plan.config.db)
    result = SessionResult.from_dict(_record(session.to_dict(), 2.0)["result"])
    compare.store_result(store, compare.RunOutcome(None, []), "qbench compare", the_plan, cell, session, result)
    stored = store.sessions()
    store.close()
    old = {k: v for k, v in session.to_dict().items() if k not in ("measure_settings", "qbench_version")}
    old = _record(old, 2.0)
    before = {tuple(r["run_ids"]): r for r in aggregate(stored + [old])}
    edited = replace(load_gpu_spec("h100-sxm5"), peak_bandwidth_gbps=1675.0, bandwidth_source="edited")
    monkeypatch.setattr(aggregation, "load_gpu_spec", lambda name: edited)
    after = {tuple(r["run_ids"]): r for r in aggregate(stored + [old])}
    new = (stored[0]["run_id"],)
    assert before[new]["floor_ms_peak"] == after[new]["floor_ms_peak"] == pytest.approx(2.0)
    assert after[new]["peak_bandwidth_gbps"] == 3350 and "datasheet" in after[new]["bandwidth_source"]
    # a row stored before the bandwidth was: today's spec, and it says so
    old_row = after[("r1",)]
    assert old_row["floor_ms_peak"] == pytest.approx(4.0)
    assert old_row["bandwidth_source"].startswith("spec at export")


def test_rows_stored_before_the_key_held_settings_still_aggregate():
    config = {k: v for k, v in _config().items() if k not in ("measure_settings", "qbench_version", "measured_code")}
    (row,) = aggregate([_record(config, 2.0), _record(config, 2.2, run_id="r2")])
    assert row["sessions"] == "2/2" and row["ms_per_step"] == pytest.approx(2.1)
    assert row["qbench_version"] == row["measure_settings"] == report.NOT_STORED
    assert row["floor_ms_peak"] == pytest.approx(2.0) and row["bandwidth_source"].startswith("spec at export")
    for fmt in ("md", "csv", "json"):
        assert "not stored" in render([row], fmt)
    # the worker reads such a config as the defaults
    old = SessionConfig.from_json(json.dumps(config))
    assert old.measure_settings == dict(settings.DEFAULT_MEASURE_SETTINGS) and old.measured_code == ""


def test_the_worker_runs_under_the_switches_it_was_keyed_under(monkeypatch):
    from qbench.session.run import apply_measure_settings

    monkeypatch.setenv("QBENCH_LEAN_GEMV", "auto")
    config = SessionConfig.from_json(json.dumps(_config(measure_settings={"QBENCH_LEAN_GEMV": "cublas"})))
    apply_measure_settings(config)
    import os

    assert os.environ["QBENCH_LEAN_GEMV"] == "cublas" and os.environ["QBENCH_LEAN_COMPILE"] == "1"
    with pytest.raises(UserError, match="not the planning qbench's"):
        apply_measure_settings(replace(config, measured_code="0" * 16))


def compare_args(db) -> list[str]:
    return ["compare", "--model", "tiny", "--backends", "bf16", "--runtimes", "lean", "--ctx", "16"]  + [
        "--warmup", "1", "--steps", "2", "--sessions", "1", "--db", str(db), "--resume", "--format", "json"
    ]


def test_resume_after_changing_a_lean_switch_measures_again(tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("QBENCH_FORKSERVER", "0")
    first = CliRunner().invoke(main, compare_args(db), catch_exceptions=False)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, compare_args(db), catch_exceptions=False)
    assert "already stored" in again.stderr
    switched = CliRunner().invoke(main, compare_args(db), env={"QBENCH_LEAN_GEMV": "cublas"}, catch_exceptions=False)
    assert switched.exit_code == 0, switched.output
    assert "already stored" not in switched.stderr
    store = Store(db, readonly=True)
    sessions = store.sessions()
    store.close()
    assert len(sessions) == 2 and len({s["cell_hash"] for s in sessions}) == 2
    ran = next(s for s in sessions if s["config"]["measure_settings"]["QBENCH_LEAN_GEMV"] == "cublas")
    assert "lean: 16-bit linear layers: F.linear (QBENCH_LEAN_GEMV=cublas)" in ran["result"]["runtime_notes"]
    (row,) = json.loads(switched.stdout)
    assert "QBENCH_LEAN_GEMV=cublas" in row["measure_settings"]


def test_a_bad_lean_switch_is_one_line(tmp_path):
    result = CliRunner().invoke(main, compare_args(tmp_path / "r.sqlite"), env={"QBENCH_LEAN_ATTENTION": "flash"})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "QBENCH_LEAN_ATTENTION must be one of auto, sdpa, split-k" in lines[0], lines
    assert not (tmp_path / "r.sqlite").exists()


FOLD = ("QBENCH_LEAN_FOLD", ("off", "on"))


def sides(jobs) -> list[str]:
    return [session.measure_settings["QBENCH_LEAN_FOLD"] for session, _ in jobs]


def test_vary_makes_a_cell_per_value_keyed_as_the_environment_would_and_interleaves_them(monkeypatch):
    config = replace(TINY, sessions=4, vary=(FOLD,))
    the_plan = plan(config, CPU)
    jobs = session_jobs(the_plan)
    assert len(jobs) == compare.planned_sessions(the_plan) == 8
    # A B, B A, A B, B A: neither side always first
    assert sides(jobs) == ["off", "on", "on", "off", "off", "on", "on", "off"]
    assert [s.session_index for s, _ in jobs] == [0, 0, 1, 1, 2, 2, 3, 3]
    cells = {side: {cell for (s, cell) in jobs if s.measure_settings["QBENCH_LEAN_FOLD"] == side} for side in FOLD[1]}
    assert cells["off"] == set(hashes(replace(TINY, sessions=4)))
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    assert cells["on"] == set(hashes(replace(TINY, sessions=4)))
    # the environment's value of a varied switch is replaced, and said; two switches: every combination
    gemv = ("QBENCH_LEAN_GEMV", ("cublas", "triton"))
    both = plan(replace(TINY, vary=(FOLD, gemv)), CPU)
    assert any("replaces QBENCH_LEAN_FOLD='on' from the environment" in note for note in both.notes)
    chosen = [(s.measure_settings["QBENCH_LEAN_FOLD"], s.measure_settings["QBENCH_LEAN_GEMV"]) for s, _ in
              session_jobs(both)]
    assert chosen == [("off", "cublas"), ("off", "triton"), ("on", "cublas"), ("on", "triton")]
    label = compare.session_label(both, session_jobs(both)[1][0])
    assert label.endswith("[QBENCH_LEAN_FOLD=off, QBENCH_LEAN_GEMV=triton]"), label


def test_a_varied_switch_may_be_bad_in_the_environment_and_another_may_not(monkeypatch):
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "bogus")
    assert len(session_jobs(plan(replace(TINY, vary=(FOLD,)), CPU))) == 2
    with pytest.raises(UserError, match="QBENCH_LEAN_FOLD must be one of off, on"):
        plan(replace(TINY, vary=(("QBENCH_LEAN_GEMV", ("cublas",)),)), CPU)


@pytest.mark.parametrize(
    "given, said",
    [
        ("QBENCH_LEAN_FOLD", "--vary takes NAME=VALUE,VALUE with NAME one of QBENCH_LEAN_GEMV"),
        ("LEAN_FOLD=off,on", "did you mean QBENCH_LEAN_FOLD (values off, on)?"),
        ("qbench_lean_pdl=off,on", "did you mean QBENCH_LEAN_PDL (values off, on)?"),
        ("QBENCH_CACHE_GB=1,2", "--vary takes NAME=VALUE,VALUE"),
        ("QBENCH_LEAN_FOLD=", "--vary QBENCH_LEAN_FOLD takes distinct values from off, on, got ''"),
        ("QBENCH_LEAN_FOLD=off,", "--vary QBENCH_LEAN_FOLD takes distinct values"),
        ("QBENCH_LEAN_FOLD=off,maybe", "got 'off,maybe'"),
        ("QBENCH_LEAN_FOLD=on,on", "got 'on,on'"),
    ],
)
def test_a_bad_vary_is_one_line_and_writes_nothing(tmp_path, given, said):
    result = CliRunner().invoke(main, [*compare_args(tmp_path / "r.sqlite"), "--vary", given])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], lines
    assert not (tmp_path / "r.sqlite").exists()


def test_a_switch_varied_twice_is_one_line():
    with pytest.raises(UserError, match="--vary names QBENCH_LEAN_FOLD twice"):
        settings.parse_vary(["QBENCH_LEAN_FOLD=on", "QBENCH_LEAN_FOLD=off"])
    with pytest.raises(UserError, match="--vary must be"):
        replace(TINY, vary=(("QBENCH_LEAN_FOLD", ("off,on",)),))


def test_vs_base_compares_a_row_with_itself_under_the_default_switches():
    base = _config()
    folded = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_FOLD": "on"})
    other_code = _config(measure_settings=folded["measure_settings"], measured_code="0" * 16)
    records = [_record(base, 2.0), _record(base, 2.2, "r2"), _record(folded, 1.0), _record(folded, 1.2, "r2")]
    rows = {(r["measure_settings"], r["measured_code"]): r for r in aggregate(records + [_record(other_code, 1.0)])}
    default = rows[(aggregation.measure_settings_text(base), base["measured_code"])]
    on = rows[(aggregation.measure_settings_text(folded), base["measured_code"])]
    alone = rows[(aggregation.measure_settings_text(folded), "0" * 16)]
    assert on["settings_speedup"] == pytest.approx(2.1 / 1.1)
    assert on["settings_interval"].low < on["settings_speedup"] < on["settings_interval"].high
    assert "settings_speedup" not in default and "settings_speedup" not in alone  # no default row of its code
    text = render([default, on], "md")
    assert "ctx 16" in text and text.count("; under QBENCH_LEAN_FOLD=on") == 1 and "vs base x" in text
    exported = {float(r["ms_per_step"]): r for r in csv.DictReader(io.StringIO(render([default, on], "csv")))}
    assert float(exported[1.1]["settings_speedup"]) == pytest.approx(2.1 / 1.1)
    assert float(exported[1.1]["vs_base_x_low"]) < 1.9 and exported[2.1]["vs_base_x_low"] == ""
    assert exported[1.1]["settings_base"] == "the defaults" and exported[2.1]["settings_base"] == ""
    assert "across_settings" not in json.loads(render([on], "json"))[0]


def test_compare_vary_runs_both_sides_and_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_FORKSERVER", "0")
    args = [*compare_args(tmp_path / "v.sqlite"), "--vary", "QBENCH_LEAN_GEMV=auto,cublas"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[QBENCH_LEAN_GEMV=cublas]" in result.stderr and "[QBENCH_LEAN_GEMV=auto]" in result.stderr
    rows = {row["measure_settings"].split(",")[0]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"QBENCH_LEAN_GEMV=auto", "QBENCH_LEAN_GEMV=cublas"}
    assert rows["QBENCH_LEAN_GEMV=cublas"]["settings_speedup"] > 0
    assert rows["QBENCH_LEAN_GEMV=cublas"]["switched"] == {"QBENCH_LEAN_GEMV": "cublas"}
    assert "QBENCH_LEAN_GEMV=cublas" in " ".join(rows["QBENCH_LEAN_GEMV=cublas"]["runtime_notes"])
    # the sessions view names each side's runtime with its switches
    sessions = CliRunner().invoke(main, ["export", "--db", str(tmp_path / "v.sqlite"), "--view", "sessions",
                                         "--format", "md"])  # fmt: skip
    assert sessions.exit_code == 0, sessions.output
    named = [line for line in sessions.stdout.splitlines() if line.startswith("| tiny")]
    assert sum("lean (QBENCH_LEAN_GEMV=cublas)" in line for line in named) == 2, named  # a session, its summary
    assert sum(bool(re.search(r"\| lean +\|", line)) for line in named) == 2, named


def test_the_kernels_view_names_a_cell_under_other_switches():
    base = _config()
    folded = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_FOLD": "on"})
    records = [_record(base, 2.0), _record(folded, 1.0)]
    for record in records:
        record["result"]["step_kernels"] = [{"name": "gemv_kernel", "count": 196, "gpu_us": 900.0}]
    rows = aggregation.kernel_rows(records)
    assert sorted(str(r["switched"]) for r in rows) == ["{'QBENCH_LEAN_FOLD': 'on'}", "{}"]
    text = report.render_kernels(rows, "md")
    assert "lean (QBENCH_LEAN_FOLD=on)" in text and len(re.findall(r"\| lean +\|", text)) == 1


def test_vs_base_where_no_side_is_the_default():
    base = _config()
    settings_of = base["measure_settings"]
    cublas = _config(measure_settings={**settings_of, "QBENCH_LEAN_GEMV": "cublas"})
    triton = _config(measure_settings={**settings_of, "QBENCH_LEAN_GEMV": "triton"})
    rows = {r["measure_settings"]: r for r in aggregate([_record(triton, 1.0), _record(cublas, 2.0)])}
    faster = rows[aggregation.measure_settings_text(triton)]
    assert faster["settings_speedup"] == pytest.approx(2.0)
    assert faster["settings_base"] == "QBENCH_LEAN_GEMV=cublas"
    assert "settings_speedup" not in rows[aggregation.measure_settings_text(cublas)]
    # an A/B of the fold with QBENCH_LEAN_COMPILE=0 from the environment on both sides
    eager = {**settings_of, "QBENCH_LEAN_COMPILE": "0"}
    plain, folded = _config(measure_settings=eager), _config(measure_settings={**eager, "QBENCH_LEAN_FOLD": "on"})
    rows = {r["measure_settings"]: r for r in aggregate([_record(folded, 1.0), _record(plain, 4.0)])}
    assert rows[aggregation.measure_settings_text(folded)]["settings_speedup"] == pytest.approx(4.0)
    assert rows[aggregation.measure_settings_text(folded)]["settings_base"] == "QBENCH_LEAN_COMPILE=0"


def test_the_terminal_keeps_vs_base_however_wide_the_rows():
    rows = aggregate([_record(_config(), 2.0), _record(_config(measure_settings={"QBENCH_LEAN_FOLD": "on"}), 1.0)])
    headers, body = report.table_rows(rows)
    body = [[cell and "x" * 14 for cell in cells] for cells in body]  # every filled column wide
    kept = report.choose_columns(headers, body, report.FORMATS["table"], wide=False)
    assert "vs base x" in kept and "TTFT ms" not in kept


def test_vary_measures_a_runtime_that_reads_no_switch_once(monkeypatch):
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    the_plan = plan(replace(TINY, runtimes=("hf", "lean"), sessions=2, vary=(FOLD,)), CPU)
    jobs = session_jobs(the_plan)
    assert len(jobs) == compare.planned_sessions(the_plan) == 6
    hf = [s.measure_settings["QBENCH_LEAN_FOLD"] for s, _ in jobs if s.runtime == "hf"]
    assert hf == ["off", "off"]  # one cell: the environment's switches, the varied one at its default
    labels = [compare.session_label(the_plan, s) for s, _ in jobs]
    assert [label.endswith("]") for label in labels] == [s.runtime == "lean" for s, _ in jobs]  # hf has no side
    lean = [s.measure_settings["QBENCH_LEAN_FOLD"] for s, _ in jobs if s.runtime == "lean"]
    assert lean == ["off", "on", "on", "off"]
    one = plan(replace(TINY, vary=(("QBENCH_LEAN_FOLD", ("on",)),)), CPU)
    assert any("names one value: no A/B" in note for note in one.notes)


def test_a_bad_value_of_a_varied_switch_in_the_environment_is_not_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "bogus")
    config = replace(TINY, vary=(FOLD,), db=str(tmp_path / "c.sqlite"))
    compare.check_runnable([plan(config, CPU)])  # --vary sets it itself
    with pytest.raises(UserError, match="QBENCH_LEAN_FOLD must be one of off, on"):
        settings.check()


def test_the_replication_view_names_each_sides_runtime():
    cells = [{"model": "tiny", "ctx": 16, "runtime": "lean", "runtime_label": label} for label in
             ("lean", "lean (QBENCH_LEAN_FOLD=on)")]  # fmt: skip
    text = report.render_replication(cells, "md")
    assert "| runtime " in text and "lean (QBENCH_LEAN_FOLD=on)" in text


def test_a_stopped_runs_resume_line_keeps_a_quoted_word_whole(monkeypatch):
    from qbench.cli.common import _command_line
    from qbench.execute.progress import resume_command

    monkeypatch.setattr("sys.argv", ["qbench", "compare", "--vary", "QBENCH_LEAN_FOLD=off, on", "--fresh"])
    typed = _command_line()
    assert typed == "qbench compare --vary 'QBENCH_LEAN_FOLD=off, on' --fresh"
    assert resume_command(typed) == "qbench compare --vary 'QBENCH_LEAN_FOLD=off, on'"
    assert resume_command("qbench compare --db it's") == "qbench compare --db it's --resume"  # stored unquoted


def test_vs_base_pairs_the_sessions_that_ran_side_by_side():
    """compare --vary runs session i of each side one after the other: a drift between sessions moves
    both, and the paired interval (per-session ratios) sees through it where the unpaired one cannot."""
    from qbench.analysis import stats

    base = _config()
    folded = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_FOLD": "on"})
    plain_ms, folded_ms = [2.0, 2.4, 2.2, 2.6], [1.01, 1.19, 1.1, 1.31]
    records = [_record({**base, "session_index": i}, ms) for i, ms in enumerate(plain_ms)]
    side_by_side = records + [_record({**folded, "session_index": i}, ms) for i, ms in enumerate(folded_ms)]
    (_, on) = sorted(aggregate(side_by_side), key=lambda r: -r["ms_per_step"])
    assert on["settings_interval"] == stats.ratio_interval(plain_ms, folded_ms, paired=True)
    unpaired = stats.ratio_interval(plain_ms, folded_ms, paired=False)
    assert on["settings_interval"].high - on["settings_interval"].low < (unpaired.high - unpaired.low) / 3
    # the folded sessions from another run (measured later, not beside these): unpaired
    later = records + [_record({**folded, "session_index": i}, ms, "r9") for i, ms in enumerate(folded_ms)]
    (_, on) = sorted(aggregate(later), key=lambda r: -r["ms_per_step"])
    assert on["settings_interval"] == unpaired


def test_a_runtime_that_reads_no_switch_is_keyed_under_the_defaults(monkeypatch):
    monkeypatch.setenv("QBENCH_LEAN_FOLD", "on")
    hf = replace(TINY, runtimes=("hf",))
    (session, cell), *_ = session_jobs(plan(hf, CPU))
    assert session.measure_settings == dict(settings.DEFAULT_MEASURE_SETTINGS)
    monkeypatch.delenv("QBENCH_LEAN_FOLD")
    assert cell == hashes(hf)[0]  # the environment's switches split no hf cell
    lean_only = plan(replace(hf, vary=(FOLD,)), CPU)
    assert any("--vary QBENCH_LEAN_FOLD: no runtime of this run reads it (only lean)" in n for n in lean_only.notes)
    assert len(session_jobs(lean_only)) == 1


def test_vs_base_ties_and_runtimes_that_read_no_switch():
    base = _config()
    folded = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_FOLD": "on"})
    # two cards of one spec in one store: two cells of the default switches (the device is in the cell hash)
    records = [_record(base, 2.0), _record(base, 2.2, "r2"), _record(folded, 1.0), _record(folded, 1.1, "r2")]
    other_card = _record(base, 4.0, "r3")
    other_card["cell_hash"] = cell_hash(base, "h100-sxm5 #2")
    rows = aggregate(records + [other_card])
    by_ms = {r["ms_per_step"]: r for r in rows}
    assert by_ms[1.05]["settings_speedup"] == pytest.approx(2.1 / 1.05)  # the base: the cell with more sessions
    assert "settings_speedup" not in by_ms[4.0] and "settings_speedup" not in by_ms[2.1]  # no A/B of switches
    # hf reads no switch: rows of it under other switches (an older store keyed them so) are no A/B
    hf = [{**config, "runtime": "hf"} for config in (base, folded)]
    rows = aggregate([_record(hf[0], 2.0), _record(hf[1], 1.0)])
    assert not any("settings_speedup" in r for r in rows)


def test_each_section_shows_its_own_columns():
    base = _config()
    folded = _config(measure_settings={**base["measure_settings"], "QBENCH_LEAN_FOLD": "on"})
    text = render(aggregate([_record(base, 2.0), _record(folded, 1.0)]), "md")
    default_part, folded_part = text.split("; under QBENCH_LEAN_FOLD=on")
    assert "vs base x" not in default_part and "vs base x" in folded_part

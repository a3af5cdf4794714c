"""A plugin cannot take a run down (issue 21, items 10 and 11): whatever its import raises, ends or
prints, and whatever its backend raises in load() or declares as its bytes, the plugin is named
with the reason and the rest of the run goes on."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import install_plugin

from qbench.analysis.floor import StepBytes
from qbench.cli import main
from qbench.store import Store

FAST = ["--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "2"]

# module -> (the entry's name, what its import does)
AT_IMPORT = {
    "adv_exit": ("adv-exit", "raise SystemExit(7)"),
    "adv_interrupt": ("adv-interrupt", "raise KeyboardInterrupt"),
    "adv_osexit": ("adv-osexit", "import os\nos._exit(9)"),
    "adv_loud": ("adv-loud", "print('hello from a plugin', flush=True)\nimport os\nos.write(1, b'and from C\\n')"),
}
LOUD_BACKEND = """
from qbench.backends.bf16 import Bf16Backend
class B(Bf16Backend):
    name = "adv-loud"
"""


def install_each(tmp_path, monkeypatch, modules: dict[str, tuple[str, str]]) -> None:
    for module, (name, body) in modules.items():
        source = body + ("\n" + LOUD_BACKEND if name == "adv-loud" else "\nclass B: pass\n")
        install_plugin(tmp_path / module, monkeypatch, f"{name}-dist", module, source, {name: "B"})


def test_a_plugin_that_exits_interrupts_or_prints_at_import_costs_its_own_row(tmp_path, monkeypatch):
    install_each(tmp_path, monkeypatch, AT_IMPORT)
    run = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "compare", *FAST, "--format", "json", "--db", "r.sqlite"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    rows = {row["backend"]: row for row in json.loads(run.stdout)}  # stdout is qbench's JSON, nothing else
    assert rows["bf16"]["status"].startswith("ok") and rows["adv-loud"]["status"].startswith("ok")
    skipped = {line.split(":")[0]: line for line in run.stderr.splitlines() if line.startswith("skipping adv-")}
    assert "failed to import: SystemExit(7)" in skipped["skipping adv-exit"]
    assert "failed to import: KeyboardInterrupt()" in skipped["skipping adv-interrupt"]
    assert "it ended the process at import (exit code 9)" in skipped["skipping adv-osexit"]
    assert "adv-osexit-dist 0.1" in skipped["skipping adv-osexit"]
    assert "hello from a plugin" in run.stderr and "Traceback" not in run.stderr

    listed = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "backends", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    by_name = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert by_name["adv-loud"]["available"] and by_name["bf16"]["available"]
    for name in ("adv-exit", "adv-interrupt", "adv-osexit"):
        assert not by_name[name]["available"] and "failed to import" in by_name[name]["why_not"]


def test_a_plugin_whose_import_hangs_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("qbench.plugins.PLUGIN_IMPORT_S", 3.0)
    hang = {"adv_sleep": ("adv-sleep", "import time\ntime.sleep(3600)")}
    install_each(tmp_path, monkeypatch, hang)
    listed = CliRunner().invoke(main, ["backends", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    by_name = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert by_name["bf16"]["available"]
    assert not by_name["adv-sleep"]["available"]
    assert "its import did not finish within 3 s" in by_name["adv-sleep"]["why_not"]


def test_a_plugins_prints_at_import_never_reach_stdout(tmp_path, monkeypatch, capfd):
    from qbench.registry import load_backend

    install_each(tmp_path, monkeypatch, {"adv_loud": AT_IMPORT["adv_loud"]})
    assert load_backend("adv-loud").name == "adv-loud"
    out, err = capfd.readouterr()
    assert out == "" and "hello from a plugin" in err and "and from C" in err


LOAD_RAISES = """
    from qbench.backends.bf16 import Bf16Backend

    class Exits(Bf16Backend):
        name = "adv-load-exit"
        def load(self, spec, options):
            raise SystemExit(5)

    class Interrupts(Bf16Backend):
        name = "adv-load-interrupt"
        def load(self, spec, options):
            raise KeyboardInterrupt
"""


@pytest.mark.parametrize("start", ["spawned", "forked"])
def test_system_exit_or_keyboard_interrupt_in_load_is_named(tmp_path, monkeypatch, start):
    entries = {"adv-load-exit": "Exits", "adv-load-interrupt": "Interrupts"}
    install_plugin(tmp_path / "site", monkeypatch, "adv-load", "adv_load", LOAD_RAISES, entries)
    if start == "spawned":
        monkeypatch.setenv("QBENCH_FORKSERVER", "0")
    args = ["compare", *FAST, "--backends", "bf16,adv-load-exit,adv-load-interrupt", "--db", "r.sqlite"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    store = Store("r.sqlite", readonly=True)
    results = {s["config"]["backend"]: s["result"] for s in store.sessions()}
    store.close()
    assert results["bf16"]["worker_start"] == ("spawn" if start == "spawned" else "fork")
    for backend, raised in (("adv-load-exit", "SystemExit(5)"), ("adv-load-interrupt", "KeyboardInterrupt()")):
        assert results[backend]["status"] == "failed", results[backend]
        assert results[backend]["reason"].startswith(f"{raised} raised in load() (adv_load/__init__.py:"), results[
            backend
        ]["reason"]


ENGINE = '''
    import os
    import torch
    from qbench.api import Backend, StepBytes

    class Runner:
        runtime = "adv"
        timer = "wall"
        graphs = "none"
        device = torch.device("cpu")
        notes = []

        def __init__(self, vocab):
            self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))

        def prefill(self, tokens):
            return self.step(tokens[-1:])

        def step(self, token):
            return self.table[int(token)].clone()

        def step_bytes(self, ctx):
            return StepBytes(*[int(n) for n in os.environ["ADV_BYTES"].split(",")])

        def reference(self, on):
            pass

        def release_reference(self):
            pass

    class Engine(Backend):
        name = "adv-bytes"
        runtimes = ("adv",)

        def load(self, spec, options):
            return Runner(spec.vocab_size)

    class Declared(Engine):
        """A whole runtime that declares its format's formula: 1 byte a weight."""
        name = "adv-declared"

        def linear_bytes(self, in_features, out_features, group_size):
            return in_features * out_features
'''


def test_negative_byte_counts_make_the_session_incorrect_and_the_report_skips_it(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site", monkeypatch, "adv-bytes", "adv_bytes", ENGINE, {"adv-bytes": "Engine"})
    monkeypatch.setenv("ADV_BYTES", "-5,0,0,0,0,0")
    args = ["compare", *FAST, "--backends", "bf16,adv-bytes", "--db", "r.sqlite", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {row["backend"]: row for row in json.loads(result.stdout)}
    assert rows["adv-bytes"]["status"].startswith("incorrect"), rows["adv-bytes"]
    store = Store("r.sqlite", readonly=True)
    (session,) = [s for s in store.sessions() if s["config"]["backend"] == "adv-bytes"]
    store.close()
    assert (
        session["result"]["reason"]
        == "runner.step_bytes(16) gives linear_weights -5: byte counts are whole numbers >= 0"
    )
    report = CliRunner().invoke(main, ["report", "--db", "r.sqlite", "--out", "report.md"])
    assert report.exit_code == 0, report.output
    assert "deploy adv-bytes" not in (tmp_path / "report.md").read_text()


def test_a_whole_runtime_that_declares_a_formula_is_held_to_it(tmp_path, monkeypatch):
    from qbench.analysis.floor import step_bytes
    from qbench.specs import load_model_spec

    entries = {"adv-declared": "Declared"}
    install_plugin(tmp_path / "site", monkeypatch, "adv-bytes", "adv_bytes", ENGINE, entries)
    formula = step_bytes(load_model_spec("tiny"), 16, lambda i, o, g: i * o)
    counts = [formula.linear_weights + 1, 0, 0, 0, 0, 0]  # one byte more than its own formula
    monkeypatch.setenv("ADV_BYTES", ",".join(map(str, counts)))
    args = ["compare", *FAST, "--backends", "adv-declared", "--db", "r.sqlite"]
    CliRunner().invoke(main, args)
    store = Store("r.sqlite", readonly=True)
    (session,) = store.sessions()
    store.close()
    assert session["result"]["status"] == "incorrect"
    assert "differ from the format's formula" in session["result"]["reason"]


class Liar(StepBytes):
    @property
    def weights(self) -> int:
        return -5


@pytest.mark.parametrize(
    "counted, wrong",
    [
        (StepBytes(10, 0, 0, 2, 4, 8), ""),
        (StepBytes(10, 0, -1, 2, 4, 8), "gives norms -1"),
        (StepBytes(10, 0, 0, 2, 4, float("nan")), "gives kv_cache nan"),
        (StepBytes(10, 0, 0, 2, 4, float("inf")), "gives kv_cache inf"),
        (StepBytes(10.5, 0, 0, 2, 4, 8), "gives linear_weights 10.5"),
        (StepBytes(True, 0, 0, 2, 4, 8), "gives linear_weights True"),
        (StepBytes("10", 0, 0, 2, 4, 8), "gives linear_weights '10'"),
        (StepBytes(0, 0, 0, 0, 0, 8), "gives 0 bytes of weights"),
        ({"linear_weights": 10}, "returned dict, not a qbench.api.StepBytes"),
    ],
)
def test_byte_counts_are_whole_numbers_and_the_weights_more_than_zero(counted, wrong):
    from qbench.session.run import checked_step_bytes

    stored, said = checked_step_bytes(counted)
    assert (said == "") if not wrong else (wrong in said), said
    assert type(stored) is StepBytes


def test_a_step_bytes_subclass_cannot_change_the_sums():
    from qbench.session.run import checked_step_bytes

    stored, said = checked_step_bytes(Liar(10, 0, 0, 2, 4, 8))
    assert said == "" and type(stored) is StepBytes and stored.weights == 16 and stored.total == 24


def test_numpy_integers_are_byte_counts():
    import numpy as np

    from qbench.session.run import checked_step_bytes

    stored, said = checked_step_bytes(StepBytes(np.int64(10), 0, 0, 2, 4, 8.0))
    assert said == "" and stored.total == 24 and type(stored.linear_weights) is int

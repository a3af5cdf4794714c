"""A signal before the first session (issue 21, item 14) ends qbench as one during a session does:
exit 130 / 143 / 129, one line, no traceback, and nothing left running.

The run is held where the signal must land by a plugin whose import blocks in one process only (the
forkserver's preload, or the plugin probe while planning) after writing a marker file: the signal
is sent once the marker is there, never after a guessed delay."""

import signal

import pytest
from conftest import install_plugin
from test_processes import FAST, alive, descendants, qbench, wait_for

BLOCKS = """
    import os, time
    from pathlib import Path
    from qbench.backends.bf16 import Bf16Backend

    command = Path("/proc/self/cmdline").read_bytes()
    mark = {"forkserver": b"--serve", "probe": b'EntryPoint("probe"'}[os.environ["GATE_WHERE"]]
    if mark in command:  # held here until qbench's interrupt takes this process down
        Path(os.environ["GATE_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)

    class Gate(Bf16Backend):
        name = "gate-block"
"""

CASES = [
    pytest.param(where, sent, code, id=f"{where}-{sent.name}")
    for where, sent, code in [
        ("forkserver", signal.SIGINT, 130),
        ("forkserver", signal.SIGTERM, 143),
        ("forkserver", signal.SIGHUP, 129),
        ("probe", signal.SIGTERM, 143),
    ]
]


@pytest.mark.parametrize("where, sent, exit_code", CASES)
def test_a_signal_before_the_first_session_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, where, sent, exit_code
):
    install_plugin(tmp_path / "site", monkeypatch, "gate-block", "gate_block", BLOCKS, {"gate-block": "Gate"})
    marker = tmp_path / "held"
    monkeypatch.setenv("GATE_WHERE", where)
    monkeypatch.setenv("GATE_MARKER", str(marker))
    cli = qbench(["compare", *FAST, "--backends", "bf16,gate-block", "--db", str(tmp_path / "r.sqlite")], tmp_path)
    try:
        assert wait_for(lambda: marker.exists() or cli.poll() is not None, timeout=300)
        assert marker.exists(), f"qbench ended before the {where} imported the plugin: {cli.communicate()}"
        below = descendants(cli.pid)
        assert int(marker.read_text()) in below
        cli.send_signal(sent)
        _, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    name = signal.Signals(sent).name
    assert cli.returncode == exit_code, stderr
    assert stderr.splitlines()[-1] == f"qbench: interrupted by {name}", stderr
    assert stderr.count("interrupted") == 1 and "Traceback" not in stderr and "Aborted" not in stderr
    assert not [pid for pid in below if alive(pid)]  # gone when qbench is: the forkserver or probe was killed

"""tools/device/apply_table.py: qbench-int4's block table written from int4_shapes.py sweeps."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "device" / "apply_table.py"
KERNEL = ROOT / "qbench" / "runtimes" / "kernels" / "gemv_int4.py"
NAMES = {(4608, 3584): "qkv fused", (3584, 3584): "o", (37888, 3584): "gate+up fused", (3584, 18944): "down"}


def committed_table(text: str) -> dict:
    body = re.search(r"^TABLE: [^\n]*\n(.*?)^\}\n", text, re.M | re.S).group(1)
    return ast.literal_eval("{" + body + "}")


def sweep(winners: dict, slower: float = 2.0) -> dict:
    """A sweep in int4_shapes.py's layout whose fastest configuration per shape is `winners[(n, k)]`."""
    shapes = {}
    for (n, k), name in NAMES.items():
        configs = {
            str(winners[(n, k)]): {"us": 10.0},
            str((8, 1, 1, 1)): {"us": 10.0 * slower},
            "(16, 2, 2, 2)": {"error": "x"},
        }
        shapes[name] = {"qbench-int4": {"configs": configs}}
    return {"shapes": shapes}


def apply(tmp_path, *sweeps) -> subprocess.CompletedProcess:
    files = []
    for i, content in enumerate(sweeps):
        files.append(tmp_path / f"s{i}.json")
        files[-1].write_text(json.dumps(content))
    return subprocess.run(
        [sys.executable, str(TOOL), str(tmp_path / "k.py"), *map(str, files)], capture_output=True, text=True
    )


def test_the_committed_table_written_again_is_the_same_bytes(tmp_path):
    original = KERNEL.read_text()
    (tmp_path / "k.py").write_text(original)
    done = apply(tmp_path, sweep(committed_table(original)))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "k.py").read_text() == original  # so a commit of the device's table has its digest


def test_the_fastest_over_every_sweep_wins_and_nothing_else_changes(tmp_path):
    original = KERNEL.read_text()
    (tmp_path / "k.py").write_text(original)
    table = committed_table(original)
    faster = dict(table)
    faster[(37888, 3584)] = (64, 4, 8, 4, True)  # the bf16x2 variant, in the second sweep only
    second = sweep(faster)
    second["shapes"]["gate+up fused"]["qbench-int4"]["configs"][str((64, 4, 8, 4, True))] = {"us": 9.0}
    done = apply(tmp_path, sweep(table), second)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "k.py").read_text()
    assert committed_table(written) == {**table, (37888, 3584): (64, 4, 8, 4, True)}
    before, after = original.splitlines(), written.splitlines()
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [
        i for i, line in enumerate(before) if line.startswith("    (37888, 3584):")
    ]
    assert "gate+up fused  37888x3584: (64, 4, 8, 4, True) 9.0 us" in done.stdout


def test_a_sweep_missing_a_shape_leaves_the_file_alone(tmp_path):
    original = KERNEL.read_text()
    (tmp_path / "k.py").write_text(original)
    partial = sweep(committed_table(original))
    del partial["shapes"]["down"]
    done = apply(tmp_path, partial)
    assert done.returncode != 0 and "no qbench-int4 figure for down" in done.stderr
    assert (tmp_path / "k.py").read_text() == original

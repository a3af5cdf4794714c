"""How close a passing cell came to the correctness gate's limits: the gate_* columns and the
`gate-edge` flag in exports, and the deployment report saying so beside a recommendation."""

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.cli import main
from qbench.report import _gate_margin

LLAMACPP_H100 = Path(__file__).resolve().parent.parent / "results" / "h100" / "llamacpp" / "runtimes2.sqlite"


def check(error: float, agreement: float, threshold: float = 0.5) -> dict:
    return {"worst_relative_error": error, "top1_agreement": agreement, "top1_threshold": threshold, "passed": True}


@pytest.mark.parametrize(
    "checks, edge",
    [
        ([check(0.08, 0.87), check(0.02, 0.97)], False),
        ([check(0.08, 0.87), check(0.21, 0.97)], True),  # one session's error at 84% of the 25% limit
        ([check(0.05, 0.57)], True),  # top-1 7 points above its 50% threshold
        ([check(0.05, 0.93, threshold=0.9)], True),  # real weights: 3 points above 90%
        ([check(0.05, 0.60)], False),  # exactly 10 points above: not at the edge
    ],
)
def test_gate_margin_flags_a_pass_close_to_either_limit(checks, edge):
    row = {"flags": []}
    _gate_margin(row, checks)
    assert ("gate-edge" in row["flags"]) is edge
    assert row["gate_worst_error_pct"] == pytest.approx(100 * max(c["worst_relative_error"] for c in checks))
    assert row["gate_top1_pct"] == pytest.approx(100 * min(c["top1_agreement"] for c in checks))


@pytest.mark.skipif(not LLAMACPP_H100.is_file(), reason="needs the committed H100 llama.cpp results")
def test_the_h100_llamacpp_cells_carry_their_gate_margin(tmp_path):
    exported = CliRunner().invoke(main, ["export", "--db", str(LLAMACPP_H100), "--run", "all", "--format", "csv"])
    rows = {(r["backend"], r["graphs"]): r for r in csv.DictReader(io.StringIO(exported.stdout))}
    q4, q8 = rows[("llamacpp-q4_k_m", "on")], rows[("llamacpp-q8_0", "on")]
    assert "gate-edge" in q4["flags"] and float(q4["gate_top1_pct"]) == pytest.approx(50.0)
    assert "gate-edge" not in q8["flags"] and float(q8["gate_worst_error_pct"]) < 10
    out = tmp_path / "report.md"
    result = CliRunner().invoke(main, ["report", "--db", str(LLAMACPP_H100), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "passed the gate close to a limit: worst logit error 22.4% (limit 25%)" in out.read_text()

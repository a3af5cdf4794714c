"""The gate for a backend that rounds its activations (qbench.session.gate, "rounded activations"):
on synthetic weights its layers decide, each also on the model's own activations, and its logits
only need to be closer to the reference than a zero output."""

import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner

from qbench.cli import main
from qbench.quantlinear import QuantLinear
from qbench.session import gate

FAST = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--graphs", "off"]


def logits_off_by(error: float, steps: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, reference) whose every step differs by exactly `error` relative, argmax kept."""
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(steps, 50, generator=generator)
    reference[:, 0] = 100.0  # one clear winner, far from the rest
    direction = torch.randn(steps, 50, generator=generator)
    direction[:, 0] = 0.0
    direction *= (error * reference.norm(dim=-1, keepdim=True)) / direction.norm(dim=-1, keepdim=True)
    return reference + direction, reference


def test_logits_decide_unless_a_rounding_backend_runs_on_synthetic_weights():
    logits, reference = logits_off_by(0.4)
    plain = gate.compare_logits(logits, reference, "synthetic")
    assert plain.decisive and not plain.passed and "0.4 > 0.25" in plain.failure()
    rounding = gate.compare_logits(logits, reference, "synthetic", rounds_activations=True)
    assert not rounding.decisive and rounding.passed and rounding.failure() == ""
    real = gate.compare_logits(logits, reference, "/models/qwen", rounds_activations=True)
    assert real.decisive and not real.passed  # real weights: the logits decide for every backend


@pytest.mark.parametrize("error", [1.0, 1.3, float("nan")])
def test_a_rounding_backend_whose_logits_are_unrelated_fails(error):
    logits, reference = logits_off_by(0.0)
    if error == error:
        logits, reference = logits_off_by(error)
    else:
        logits[3, 7] = float("nan")
    check = gate.compare_logits(logits, reference, "synthetic", rounds_activations=True)
    assert not check.passed and "no closer to the reference than a zero output" in check.failure()


class RightOnFewRows(QuantLinear):
    """Right on the layer check's 1 and 16 rows; 1.5x off on more (a prefill's GEMM path)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0], None, 32)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def stored_tensors(self):
        return [self.weight]

    def dequantize(self):
        return self.weight.float()

    def kernel_forward(self, x):
        out = torch.nn.functional.linear(x, self.weight.to(x.dtype))
        return out * 1.5 if x.numel() // x.shape[-1] > 16 else out


def test_the_model_inputs_check_runs_the_kernel_where_the_layer_check_does_not():
    torch.manual_seed(0)
    layers = [RightOnFewRows(torch.randn(64, 64) / 8), RightOnFewRows(torch.randn(64, 64) / 8)]
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    named = [("first", layers[0]), ("second", layers[1])]
    assert gate.check_layers(named, torch.float32).passed  # 1 and 16 rows: it looks right
    x = torch.randn(1, 40, 64)  # the prefill of 40 tokens, then one decode step
    for module in layers:
        module.reference = True
    with gate.layers_on_model_inputs(named) as on_model:
        out = model(x)
        step = model(x[:, :1])
    for module in layers:
        module.reference = False
    check = on_model.result()
    assert not check.passed and check.worst_rows == 40 and check.worst_relative_error == pytest.approx(0.5)
    assert check.calls == 4 and check.most_rows == 40
    def plain(rows):  # a GEMM of 1 row and one of 40 may round differently (the CPU's kernels): each its own
        return torch.relu(rows @ layers[0].weight.T) @ layers[1].weight.T

    assert torch.allclose(out, plain(x)) and torch.allclose(step, plain(x[:, :1]))  # the reference went on unchanged
    assert not any(m._forward_hooks for m in layers)  # the hooks are gone after the check


def test_nothing_compared_is_no_pass():
    with gate.layers_on_model_inputs([]) as on_model:
        pass
    assert not on_model.result().passed


def run(*args):
    return CliRunner().invoke(main, ["compare", *FAST, *args])


def stored(db: str) -> list[dict]:
    with sqlite3.connect(db) as connection:
        return [json.loads(r) for (r,) in connection.execute("SELECT result_json FROM sessions ORDER BY id")]


def test_a_rounding_backend_passes_on_its_layers_and_is_flagged(plugin_dist):
    result = run("--backends", "fake-rounding", "--db", "r.sqlite", "--format", "json")
    assert result.exit_code == 0, result.output
    (session,) = stored("r.sqlite")
    assert session["status"] == "ok" and session["model_layer_check"]["passed"]
    assert session["model_layer_check"]["calls"] > 0 and session["model_layer_check"]["most_rows"] > 16  # the prefill
    assert all(block["logit_check"]["decisive"] is False for block in session["blocks"])
    (row,) = json.loads(result.stdout)
    assert "layers-only" in row["flags"] and row["status"] == "ok"


def test_a_rounding_backend_wrong_on_the_prefill_is_incorrect(plugin_dist):
    result = run("--backends", "fake-rounding-wrong-prefill", "--db", "r.sqlite")
    (session,) = stored("r.sqlite")
    assert session["layer_check"]["passed"]  # the layer check's 1 and 16 rows cannot see it
    assert session["status"] == "incorrect", session.get("reason")
    assert "on the model's own activations" in session["reason"] and "relative error 0.5" in session["reason"]
    assert "incorrect" in result.output


def test_the_deployment_report_says_what_a_layers_only_cell_was_not_checked_on():
    from qbench.deploy_report import quality_text

    row = {"status": "ok", "weights": "synthetic", "flags": ["layers-only"]}
    assert "its logits decided nothing in the gate" in quality_text(row)
    assert "real weights" in quality_text(row)
    assert "decided nothing" not in quality_text({**row, "flags": []})

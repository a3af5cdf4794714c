"""Every bad input is one line `qbench: error: <what>; <how to fix>` and exit 2, raised while planning:
no traceback, no hang, no session, and nothing written (issue 21, item 13). Each case goes through the
command line as a user types it."""

import json
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.cli import main
from qbench.store import Store

LONG = "a" * 5000  # longer than any file name the system takes (255 bytes)
COMPARE = ["compare", "--model", "tiny", "--backends", "bf16", "--ctx", "32", "--warmup", "1", "--steps", "3"]
COMPARE += ["--db", "r.sqlite"]
TINY = json.loads(resources.files("qbench").joinpath("data/models/tiny.json").read_text())["config"]


def tiny_with(**changes) -> dict:
    """The tiny model's config.json with fields changed (None removes one)."""
    config = dict(TINY, **changes)
    return {key: value for key, value in config.items() if value is not None}


def nested(value):
    return {"value": value}


# (command line, what the error line must contain, a config.json written as bad/config.json first)
CASES = {
    # sizes of the plan: each bounded, and the whole plan counted before its job list is built
    "sessions-huge": (COMPARE + ["--sessions", "100000000"], ["--sessions", "100000000", "1000"], None),
    "steps-huge": (COMPARE + ["--steps", "1000000000"], ["--steps"], None),
    "warmup-huge": (COMPARE + ["--warmup", "1000000000"], ["--warmup"], None),
    "rounds-huge": (COMPARE + ["--rounds", "1000000"], ["--rounds"], None),
    "plan-too-big": (
        COMPARE + ["--sessions", "1000", "--ctx", ",".join(str(c) for c in range(16, 27))],
        ["11,000 sessions", "10,000"],
        None,
    ),
    # numbers that are not numbers
    "timeout-nan": (COMPARE + ["--timeout", "nan"], ["--timeout", "nan"], None),
    "timeout-inf": (COMPARE + ["--timeout", "inf"], ["--timeout", "inf"], None),
    "timeout-negative": (COMPARE + ["--timeout", "-1"], ["--timeout", "-1"], None),
    "seed-huge": (COMPARE + ["--seed", "99999999999999999999999"], ["--seed", "9223372036854775807"], None),
    "seed-negative": (COMPARE + ["--seed", "-1"], ["--seed"], None),
    "cpu-superscript": (COMPARE + ["--cpu", "²"], ["--cpu", "²"], None),
    "cpu-other-digit": (COMPARE + ["--cpu", "٣"], ["--cpu"], None),
    "ctx-list": (COMPARE + ["--ctx", "0,-1,abc"], ["--ctx", "0,-1,abc"], None),
    "ctx-zero": (COMPARE + ["--ctx", "0"], ["--ctx"], None),
    "ctx-huge": (COMPARE + ["--model", "bad", "--ctx", "1000000000"], ["--ctx", "16777216"], "no-max-positions"),
    "ctx-digits": (COMPARE + ["--ctx", "9" * 5000], ["--ctx"], None),
    # paths the system refuses to look up
    "model-long": (COMPARE + ["--model", LONG], ["--model", "5000 characters", "File name too long"], None),
    "db-long": (COMPARE + ["--db", LONG], ["--db", "5000 characters"], None),
    "weights-long": (COMPARE + ["--weights", LONG], ["--weights", "5000 characters"], None),
    "db-empty": (COMPARE + ["--db", ""], ["--db"], None),
    # model configs: one line naming the file, the field, what was given and what is allowed
    "kv-heads": (
        COMPARE + ["--model", "bad"],
        ["bad/config.json", "num_key_value_heads 3"],
        {"num_key_value_heads": 3},
    ),
    "hidden-float": (
        COMPARE + ["--model", "bad"],
        ["bad/config.json", "hidden_size is 256.7", "positive integer"],
        {"hidden_size": 256.7},
    ),
    "hidden-string": (
        COMPARE + ["--model", "bad"],
        ["bad/config.json", 'hidden_size is "256"'],
        {"hidden_size": "256"},
    ),
    "hidden-nested": (
        COMPARE + ["--model", "bad"],
        ["hidden_size is {", "positive integer"],
        {"hidden_size": nested(256)},
    ),
    "hidden-infinity": (COMPARE + ["--model", "bad"], ["hidden_size is Infinity"], {"hidden_size": float("inf")}),
    "layers-nan": (COMPARE + ["--model", "bad"], ["num_hidden_layers is NaN"], {"num_hidden_layers": float("nan")}),
    "positions-infinity": (
        COMPARE + ["--model", "bad"],
        ["max_position_embeddings is Infinity"],
        {"max_position_embeddings": float("inf")},
    ),
    "rope-theta-nan": (COMPARE + ["--model", "bad"], ["rope_theta is NaN"], {"rope_theta": float("nan")}),
    "tie-nested": (
        COMPARE + ["--model", "bad"],
        ["tie_word_embeddings", "true or false"],
        {"tie_word_embeddings": nested(True)},
    ),
    "model-type-unknown": (
        COMPARE + ["--model", "bad"],
        ['model_type is "frobnicator"', "llama"],
        {"model_type": "frobnicator"},
    ),
    "model-type-missing": (COMPARE + ["--model", "bad"], ["bad/config.json", "lacks model_type"], {"model_type": None}),
    "vocab-missing": (COMPARE + ["--model", "bad"], ["bad/config.json", "lacks vocab_size"], {"vocab_size": None}),
    "hidden-zero": (COMPARE + ["--model", "bad"], ["bad/config.json", "hidden_size is 0"], {"hidden_size": 0}),
    "intermediate-negative": (
        COMPARE + ["--model", "bad"],
        ["bad/config.json", "intermediate_size is -5"],
        {"intermediate_size": -5},
    ),
    "hidden-not-divisible": (
        COMPARE + ["--model", "bad"],
        ["bad/config.json", "hidden_size 250", "num_attention_heads 4"],
        {"hidden_size": 250},
    ),
    "config-file-itself": (
        COMPARE + ["--model", "bad/config.json"],
        ["bad/config.json", "num_key_value_heads 3"],
        {"num_key_value_heads": 3},
    ),
    "floor-config": (
        ["floor", "--model", "bad", "--gpu", "l4"],
        ["bad/config.json", "hidden_size is 256.7"],
        {"hidden_size": 256.7},
    ),
    # the other commands' numbers
    "floor-ctx-list": (["floor", "--model", "tiny", "--gpu", "l4", "--ctx", "0,-1,abc"], ["--ctx"], None),
    "floor-ctx-huge": (
        ["floor", "--model", "bad", "--gpu", "l4", "--ctx", "1000000000"],
        ["--ctx", "16777216"],
        "no-max-positions",
    ),
    "floor-model-long": (["floor", "--model", LONG, "--gpu", "l4"], ["--model", "5000 characters"], None),
    "predict-launch-nan": (["predict", "--gpu", "l4", "--db", "s.sqlite", "--launch-us", "nan"], ["--launch-us"], None),
    "predict-launch-negative": (
        ["predict", "--gpu", "l4", "--db", "s.sqlite", "--launch-us", "-1"],
        ["--launch-us", "-1"],
        None,
    ),
    "predict-launch-inf": (["predict", "--gpu", "l4", "--db", "s.sqlite", "--launch-us", "inf"], ["--launch-us"], None),
    "predict-ctx-zero": (["predict", "--gpu", "l4", "--db", "s.sqlite", "--ctx", "0"], ["--ctx"], None),
    "predict-ctx-text": (["predict", "--gpu", "l4", "--db", "s.sqlite", "--ctx", "abc"], ["--ctx", "abc"], None),
    "predict-db-long": (["predict", "--gpu", "l4", "--db", LONG], ["--db", "5000 characters"], None),
    "report-budget-nan": (
        ["report", "--db", "s.sqlite", "--out", "r.html", "--budget-ms", "nan,-1"],
        ["--budget-ms"],
        None,
    ),
    "report-budget-negative": (
        ["report", "--db", "s.sqlite", "--out", "r.html", "--budget-ms", "-1"],
        ["--budget-ms"],
        None,
    ),
    "report-budget-text": (
        ["report", "--db", "s.sqlite", "--out", "r.html", "--budget-hz", "abc"],
        ["--budget-hz"],
        None,
    ),
    "report-db-long": (["report", "--db", LONG, "--out", "r.html"], ["--db", "5000 characters"], None),
    "export-db-long": (["export", "--db", LONG], ["--db", "5000 characters"], None),
    "replicate-sessions-huge": (
        ["replicate", "--models", "tiny", "--ctx", "32", "--sessions", "100000000", "--db", "r.sqlite"],
        ["--sessions"],
        None,
    ),
    "replicate-timeout-nan": (
        ["replicate", "--models", "tiny", "--timeout", "nan", "--db", "r.sqlite"],
        ["--timeout"],
        None,
    ),
    "replicate-cpu-superscript": (["replicate", "--models", "tiny", "--cpu", "²", "--db", "r.sqlite"], ["--cpu"], None),
}


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", CASES)
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(name, in_tmp):
    args, needles, config = CASES[name]
    if config is not None:
        (in_tmp / "bad").mkdir()
        body = tiny_with(max_position_embeddings=None) if config == "no-max-positions" else tiny_with(**config)
        (in_tmp / "bad" / "config.json").write_text(json.dumps(body))
    Store("s.sqlite").close()  # the store predict and report are pointed at: a good one, so the option is at fault
    before = snapshot(in_tmp)
    result = CliRunner().invoke(main, args)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert len(lines) == 1 and lines[0].startswith("qbench: error: "), result.output
    assert "Traceback" not in result.output and len(lines[0]) < 400, lines[0]
    assert all(needle in lines[0] for needle in needles), (needles, lines[0])
    assert snapshot(in_tmp) == before  # no store, no cache, no lock, no scratch


def test_the_largest_allowed_values_are_accepted():
    """The bounds refuse only what is past them: the largest seed torch and the store hold, the
    longest timeout and the most sessions a cell may have plan without complaint."""
    from qbench.compare import MAX_SEED, MAX_SESSIONS, MAX_TIMEOUT_S, CompareConfig

    CompareConfig(model="tiny", seed=MAX_SEED, timeout=MAX_TIMEOUT_S, sessions=MAX_SESSIONS, cpu="off")
    import torch

    torch.Generator().manual_seed(MAX_SEED)

"""The decode loop with a fake runner, and the static-cache runner against a full forward pass."""

import pytest
import torch

from qbench.backend import LoadOptions
from qbench.backends.bf16 import Bf16Backend
from qbench.session.decode import DecodeSettings, run_block, token_stream
from qbench.specs import load_model_spec


class CountingRunner:
    """Stands in for DecoderRunner: logits are one-hot on the fed token."""

    device = torch.device("cpu")
    graph = None
    use_graph = False

    def __init__(self):
        self.prefilled, self.steps = [], []

    def prefill(self, tokens):
        self.prefilled.append(tokens.numel())

    def step(self, token):
        self.steps.append(int(token))
        return torch.nn.functional.one_hot(token.view(()), 16).float()


def test_block_prefills_warms_up_then_times_every_step():
    runner = CountingRunner()
    settings = DecodeSettings(ctx=8, warmup=2, steps=5)
    tokens = token_stream(16, settings.positions, seed=1, device="cpu")
    result = run_block(runner, settings, tokens, graphs=False)
    assert runner.prefilled == [8]
    assert runner.steps == tokens[8:].tolist()  # warm-up and timed steps consume the stream in order
    assert len(result.wall_ms) == 5 and all(ms >= 0 for ms in result.wall_ms)
    assert result.event_ms == []  # CPU: wall clock only
    assert result.logits.argmax(-1).tolist() == tokens[10:].tolist()


def test_a_block_says_where_it_is_before_each_part_and_during_its_timed_steps(monkeypatch):
    """A block that does not finish (a capture that never returns, a step that hangs) shows in the last
    line it said which part stopped it: each line comes before its part's work."""
    said = []

    class Capturing(CountingRunner):
        graphs = "qbench"

        def capture_graph(self):
            self.graph = object()
            said.append("<captured>")

        def prefill(self, tokens):
            super().prefill(tokens)
            said.append("<prefilled>")

        def step(self, token):
            said.append("<step>")
            return super().step(token)

    monkeypatch.setattr("qbench.session.decode.PROGRESS_S", 0.0)  # a line after every timed step
    settings = DecodeSettings(ctx=8, warmup=1, steps=2)
    run_block(Capturing(), settings, token_stream(16, settings.positions, seed=1, device="cpu"), graphs=True,
              prefill_warmup=True, say=said.append)
    assert said == [
        "capturing the step's CUDA graph (3 warm-up steps first)", "<captured>",
        "prefill to ctx 8 (an untimed one first)", "<prefilled>", "<prefilled>",
        "1 warm-up step", "<step>",
        "2 timed steps", "<step>", "timed step 1 of 2", "<step>", "timed step 2 of 2",
    ]
    said.clear()
    monkeypatch.setattr("qbench.session.decode.PROGRESS_S", 3600.0)
    run_block(CountingRunner(), settings, token_stream(16, settings.positions, seed=1, device="cpu"), graphs=False,
              say=said.append)
    assert said == ["prefill to ctx 8", "1 warm-up step", "2 timed steps"]  # no capture, no step lines


def test_settings_are_validated():
    with pytest.raises(ValueError, match="steps"):
        DecodeSettings(ctx=8, steps=0)
    with pytest.raises(ValueError, match="warmup"):
        DecodeSettings(ctx=8, warmup=-1)


def test_token_stream_is_seeded():
    assert torch.equal(token_stream(100, 10, 3, "cpu"), token_stream(100, 10, 3, "cpu"))
    assert not torch.equal(token_stream(100, 10, 3, "cpu"), token_stream(100, 10, 4, "cpu"))


def test_static_cache_steps_match_a_full_forward_pass():
    runner = Bf16Backend().load(load_model_spec("tiny"), LoadOptions(device="cpu", max_cache_len=48))
    tokens = token_stream(1024, 40, seed=0, device="cpu")
    with torch.inference_mode():
        full = runner.model(input_ids=tokens[None]).logits[0].float()
    runner.prefill(tokens[:30])
    for position in range(30, 40):
        logits = runner.step(tokens[position : position + 1]).float()
        assert logits.argmax() == full[position].argmax()
        assert (logits - full[position]).abs().max() < 0.05  # bf16 rounding only
    with pytest.raises(RuntimeError, match="CUDA"):
        runner.capture_graph()


def test_synthetic_weights_are_seeded():
    spec = load_model_spec("tiny")
    a = Bf16Backend().load(spec, LoadOptions(device="cpu", seed=1, max_cache_len=8)).model
    b = Bf16Backend().load(spec, LoadOptions(device="cpu", seed=1, max_cache_len=8)).model
    c = Bf16Backend().load(spec, LoadOptions(device="cpu", seed=2, max_cache_len=8)).model
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])

"""The decode loop: where qbench times every step (or records an engine's own timing of it).

One block = prefill to `ctx`, `warmup` untimed steps, `steps` timed steps. Each timed step is
bracketed by CUDA events (GPU time between the step's first and last kernel) and by a wall clock
read before the call and after `synchronize()` (what a caller waiting on the token sees). A runner
whose timer is "wall" (a whole engine that synchronises to hand back logits, on a stream qbench
does not see) gets the wall clock alone; one whose timer is "runner" (an engine in its own
process, where qbench's clock would add the hand-over) times each step itself with a wall clock
around the call that returns the logits, and this loop records that. Graphs are qbench's to capture where the runner's
`graphs` is "qbench", the runtime's own switch (`set_graphs`) where it is "runtime". The loop
synchronises every step on purpose: batch-1 decode hands each token back before the next.
Decode is timed directly, never as (generate - prefill). Tokens are a fixed seeded stream fed in
(teacher forcing), so every backend sees the same inputs and the logits can be compared.

The prefill that opens every block is timed too (time to first token at this context): CUDA events
and a synchronised wall clock around the call, as for a step; an engine that times its own steps
gets the wall clock. The session's first block runs one untimed prefill before the timed one, so
first-call work (a Triton kernel compiled or autotuned for the prompt's shape) is not counted as
time to first token. An energy meter (qbench.session.energy), where given, is read right before the first
timed step and right after the last: the block's J/token and mean W, where that window spans at
least qbench.session.energy.COARSE_UPDATES refreshes of the counter. Where it is shorter (a block of
30 fast steps spans only one or two refreshes of an H100's counter: results/h100/formats8/README.md),
`energy_window` runs the block's own step again, after the timed steps and not timed for latency, at
the next cache positions, for about ENERGY_WINDOW_REFRESHES refreshes: J/token = its energy / its
steps, W = its energy / its time, and `energy_over` says which window gave the figure. It runs only
where that is safe: the steps must be qbench's (`graphs` "qbench", through
qbench.runtimes.modules.step, which refuses a position past the cache), every position must lie
within the cache's room (beyond the positions the next block's graph capture and the profiled step
need), and a graph block's replays must advance the position (`replays_at_positions`: lean reads it
from a device buffer; under hf, transformers' static cache derives its write position from the
cache's contents, so each replay wrote one slot further and on the H100 ran off the cache's end: no
window). Elsewhere the block says "not measured", with why.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qbench.session.positions import CAPTURE_WARMUP_STEPS, SPARE_POSITIONS

PROGRESS_S = 10.0  # a block's timed steps say how far they are at most this often (run_block's `say`)
ENERGY_WINDOW_REFRESHES = 12  # an energy window aims at this many counter refreshes: 10 and a margin


@dataclass(frozen=True)
class DecodeSettings:
    ctx: int
    warmup: int = 5
    steps: int = 30
    seed: int = 0

    def __post_init__(self):
        for name in ("ctx", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def positions(self) -> int:
        """Cache positions a block uses: the prompt, the warm-up and the timed steps."""
        return self.ctx + self.warmup + self.steps


@dataclass
class BlockResult:
    graphs: bool
    wall_ms: list[float]
    event_ms: list[float] = field(default_factory=list)  # empty on CPU
    logits: torch.Tensor | None = None  # [steps, vocab] float32 on the host, for the correctness gate
    prefill_ms: float | None = None  # the prefill to ctx: CUDA-event time where steps have it, else wall
    prefill_wall_ms: float | None = None
    energy: dict = field(default_factory=dict)  # qbench.session.energy.block_energy's fields, or why not measured


def token_stream(vocab_size: int, length: int, seed: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=generator).to(device)


def set_graphs(runner, graphs: bool, say: Callable[[str], None] | None = None) -> None:
    """Switch CUDA graphs on or off for the next block, whoever owns them (Runner protocol). `say`:
    told before a capture (its warm-up steps are where a compiling runtime compiles)."""
    owner = getattr(runner, "graphs", "qbench")
    if owner == "runtime":
        runner.set_graphs(graphs)
    elif owner == "qbench":
        if graphs and runner.graph is None:
            if say is not None:
                say(f"capturing the step's CUDA graph ({CAPTURE_WARMUP_STEPS} warm-up steps first)")
            runner.capture_graph()
        runner.use_graph = graphs
    elif graphs:
        raise RuntimeError(f"runtime {getattr(runner, 'runtime', '?')} has no CUDA graph mode")


def _timed_prefill(runner, prompt: torch.Tensor, cuda: bool, events: bool) -> tuple[float | None, float]:
    """(CUDA-event ms or None, wall ms) of one prefill, the device idle before and after."""
    if cuda:
        torch.cuda.synchronize(runner.device)
    start = torch.cuda.Event(enable_timing=True) if events else None
    end = torch.cuda.Event(enable_timing=True) if events else None
    if events:
        start.record()
    began = time.perf_counter()
    runner.prefill(prompt)
    if events:
        end.record()
    if cuda:
        torch.cuda.synchronize(runner.device)
    wall = (time.perf_counter() - began) * 1e3
    return (start.elapsed_time(end) if events else None), wall


def run_block(
    runner, settings: DecodeSettings, tokens: torch.Tensor, graphs: bool, meter=None, prefill_warmup: bool = False,
    say: Callable[[str], None] | None = None,
) -> BlockResult:
    """Prefill, warm up and time one block, eager or replaying a CUDA graph. `meter`: an
    qbench.session.energy.EnergyMeter read around the timed steps (None: energy is not read);
    `prefill_warmup`: one untimed prefill first (the session's first block). `say`: told as the block
    enters each part (capture, prefill, warm-up, timed steps) and every PROGRESS_S seconds of timed
    steps, so that a block which does not finish shows where it stopped."""
    cuda = runner.device.type == "cuda"
    events = cuda and getattr(runner, "timer", "cuda-events") == "cuda-events"
    tell = say if say is not None else (lambda message: None)
    set_graphs(runner, graphs, say)
    tell(f"prefill to ctx {settings.ctx}" + (" (an untimed one first)" if prefill_warmup else ""))
    if prefill_warmup:
        runner.prefill(tokens[: settings.ctx])
    prefill_event_ms, prefill_wall_ms = _timed_prefill(runner, tokens[: settings.ctx], cuda, events)
    position = settings.ctx
    if settings.warmup:
        tell(f"{settings.warmup} warm-up step{'s' if settings.warmup != 1 else ''}")
    for _ in range(settings.warmup):
        runner.step(tokens[position : position + 1])
        position += 1
    if cuda:
        torch.cuda.synchronize(runner.device)
    tell(f"{settings.steps} timed steps")
    told = time.perf_counter()
    result = BlockResult(graphs=graphs, wall_ms=[], prefill_wall_ms=prefill_wall_ms)
    result.prefill_ms = prefill_event_ms if prefill_event_ms is not None else prefill_wall_ms
    collected = []
    start = torch.cuda.Event(enable_timing=True) if events else None
    end = torch.cuda.Event(enable_timing=True) if events else None
    energy_began = meter.start() if meter is not None else None
    for _ in range(settings.steps):
        token = tokens[position : position + 1]
        position += 1
        if events:
            start.record()
            began = time.perf_counter()
            logits = runner.step(token)
            end.record()
            end.synchronize()
            ended = time.perf_counter()
            result.event_ms.append(start.elapsed_time(end))
            result.wall_ms.append((ended - began) * 1e3)
        elif getattr(runner, "timer", None) == "runner":  # timed where the step ran (the engine's process)
            logits = runner.step(token)
            result.wall_ms.append(runner.last_step_ms)
        else:
            began = time.perf_counter()
            logits = runner.step(token)
            if cuda:
                torch.cuda.synchronize(runner.device)  # a "wall" runner has synchronised already: no cost
            ended = time.perf_counter()
            result.wall_ms.append((ended - began) * 1e3)
        collected.append(logits.float().clone())  # outside the timed region
        if say is not None and time.perf_counter() - told >= PROGRESS_S:
            told = time.perf_counter()
            say(f"timed step {len(collected)} of {settings.steps}")
    if meter is not None:
        from qbench.session.energy import block_energy

        if cuda:
            torch.cuda.synchronize(runner.device)
        seconds = time.perf_counter() - energy_began.at
        joules = meter.joules_since(energy_began)
        result.energy = block_energy(joules, settings.steps, seconds, meter, f"the {settings.steps} timed steps")
        if "energy_window_ms" in result.energy and "j_per_token" not in result.energy and result.wall_ms:
            result.energy = energy_window(runner, tokens, position, graphs, meter, result.energy, result.wall_ms)
    if graphs:
        set_graphs(runner, False)
    result.logits = torch.stack(collected).cpu()
    return result


def energy_room(runner, position: int) -> int:
    """Steps an energy window may take from `position`: the cache's positions less the spare ones
    (a later block's graph capture and the profiled step use them)."""
    return max(0, getattr(runner, "max_cache_len", 0) - SPARE_POSITIONS - position)


def energy_window(runner, tokens: torch.Tensor, position: int, graphs: bool, meter, timed: dict,
                  wall_ms: list[float]) -> dict:
    """After a block whose timed window was too short for the counter (`timed`: its fields), the
    block's own step (graph replay or eager) from `position` on, synchronised every step as the
    timed ones, until about ENERGY_WINDOW_REFRESHES refreshes have passed: its energy fields, or
    the timed window's "not measured" with why no window was taken. Never writes past the cache."""
    from qbench.session.energy import block_energy

    step_ms = max(statistics.median(wall_ms), 1e-3)  # a step of no measurable time: as if a microsecond
    steps = math.ceil(ENERGY_WINDOW_REFRESHES * meter.counter_update_ms / step_ms)
    runtime = getattr(runner, "runtime", "?")
    room = energy_room(runner, position)
    if getattr(runner, "graphs", None) != "qbench" or not hasattr(runner, "max_cache_len"):
        why = f"runtime {runtime}'s steps are not qbench's to repeat for an energy window"
    elif graphs and not getattr(runner, "replays_at_positions", False):
        why = (f"no energy window of graph replays under {runtime} (its static cache takes the write position "
               "from its contents, not the step's position)")
    elif steps > room:
        why = (f"an energy window of {steps} steps needs as many cache positions, {room} are left beyond the "
               f"block (runtime {runtime} allocates {getattr(runner, 'energy_room', 0)} for it)")
    else:
        why = ""
    if why:
        return dict(timed, energy=f"{timed['energy']}; {why}")
    cuda = runner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(runner.device)
    first = position
    began = meter.start()
    for _ in range(steps):
        at = position % tokens.numel()
        runner.step(tokens[at : at + 1])
        if cuda:
            torch.cuda.synchronize(runner.device)  # as each timed step: the token handed back before the next
        position += 1
    seconds = time.perf_counter() - began.at
    kind = "graph replays" if graphs else "eager steps"
    over = (f"an energy window of {steps} {kind} after the timed steps (positions {first}-{position - 1}, "
            "not timed for latency)")
    return dict(block_energy(meter.joules_since(began), steps, seconds, meter, over), energy_window_steps=steps)

"""One measurement session, run inside a fresh worker process: load, gate, time, report.

A session loads one backend for one model, checks its correctness, then times one decode block per
requested graphs setting (eager, CUDA graph) in a random order, so drift over the session does not
favour one setting. It returns a plain dict; the parent process stores it.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import re
import sys
import time
from dataclasses import asdict, fields
from typing import Any

import torch

from qbench.analysis.floor import StepBytes, step_bytes
from qbench.api import protocol_gaps
from qbench.backend import Backend, LoadOptions
from qbench.errors import UserError
from qbench.model.build import DTYPES
from qbench.records import SessionConfig
from qbench.registry import load_backend
from qbench.runtimes import get_runtime
from qbench.session import energy, gate, host
from qbench.session.decode import DecodeSettings, run_block, token_stream
from qbench.session.positions import cache_positions, energy_positions
from qbench.session.provenance import collect, device_info, nvml_state
from qbench.settings import DEFAULT_MEASURE_SETTINGS, measured_code_digest
from qbench.specs import load_model_spec


class Phases:
    """Wall time of each phase of a session, for the per-session cost breakdown: the time since the
    previous mark goes to the phase named now."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.mark = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.mark, 3)
        self.mark = now


def log(message: str) -> None:
    print(f"[worker] {message}", file=sys.stderr, flush=True)


def phase(message: str) -> None:
    """The phase a session enters (load, gate, block i of n): in the worker's log and, through the
    worker's progress channel, on the user's terminal while the session runs (a 7B session on a CPU
    is minutes of otherwise silent work)."""
    from qbench.scratch import progress

    log(message)
    progress(message)


def profile_step_kernels(runner, token: torch.Tensor) -> list[dict[str, Any]]:
    """CUDA kernels of one eager step (torch.profiler), by GPU time: proof of which kernel ran.
    Uses one of the spare cache positions after the timed steps; not part of any timing."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        runner.step(token)
        torch.cuda.synchronize()
    kernels = [
        {"name": event.key, "count": event.count, "gpu_us": round(event.device_time_total, 1)}
        for event in profiler.key_averages()
        if event.device_time_total > 0
    ]
    return sorted(kernels, key=lambda k: -k["gpu_us"])


def timed_block(
    runner, settings, tokens, graphs: bool, device: str, meter=None, prefill_warmup: bool = False, say=None
) -> tuple[Any, dict]:
    """One timed block with the host measured right before and after it (see qbench.session.host), and its
    energy where `meter` reads it (qbench.session.energy); `say`: run_block's."""
    before = host.probe(device)
    stat_before = host.proc_stat()
    started = time.time()
    timed = run_block(runner, settings, tokens, graphs, meter, prefill_warmup, say=say)
    ended = time.time()
    stat_after = host.proc_stat()
    after = host.probe(device)
    record = {
        "before": before,
        "after": after,
        "steal_pct": host.steal_pct(stat_before, stat_after),
        "procs_running": [stat_before.get("procs_running"), stat_after.get("procs_running")],
    }
    core = before.get("core")
    if core is not None and core == after.get("core"):
        record["core_steal_pct"] = host.steal_pct(stat_before, stat_after, f"cpu{core}")
    measured = {"host": record, "started_unix": round(started, 3), "ended_unix": round(ended, 3)}
    measured.update(prefill_ms=timed.prefill_ms, prefill_wall_ms=timed.prefill_wall_ms, **timed.energy)
    measured["prefill_warm"] = True  # the session's first prefill ran untimed (qbench.session.decode)
    return timed, measured


def decode_tokens(spec, config: SessionConfig, positions: int, text: list[int] | None) -> tuple[torch.Tensor, str]:
    """The token stream fed to every block. Real weights with a tokenizer read English text (the
    quality text's ids, repeated to length): peaked logits, so the gate's top-1 agreement measures the
    kernel, not rounding on a flat distribution. Otherwise a seeded random stream."""
    if text is not None:
        ids = (text * (positions // len(text) + 1))[:positions]
        return torch.tensor(ids, dtype=torch.long, device=config.device), "text"
    return token_stream(spec.vocab_size, positions, config.seed, config.device), "random"


def reference_logits(runner, backend, spec, config, settings, tokens, use_cache: bool) -> tuple[torch.Tensor, str]:
    """The logits every timed block is checked against: the runner's reference mode (for the linear
    runtimes: transformers on the plain path with the dequantised weights, so `lean` is checked
    against `hf`), over the cell's token stream. With synthetic weights the cell's first session
    computes and stores them (qbench.model.cache); later sessions, whose weights are the same tensors,
    read them back. Returns them and where they came from."""
    key, why = None, ""
    if use_cache:
        from qbench.model.build import device_name
        from qbench.model.cache import Cache, reference_key, weights_key

        weights, _ = weights_key(spec, backend, config.group_size, config.seed, device_name(config.device))
        settings_key = {"ctx": config.ctx, "warmup": config.warmup, "steps": config.steps, "seed": config.seed}
        key = reference_key(weights, settings_key)
        stored, why = Cache().load(key, "cpu")  # why: a damaged entry, removed and rebuilt below
        if stored is not None:
            return stored["logits"], "stored by the cell's first session (same weights and tokens)"
    log("correctness gate: reference logits (dequantised weights, plain path)")
    runner.reference(True)
    reference = run_block(runner, settings, tokens, graphs=False).logits
    runner.reference(False)
    if key is None:
        return reference, "computed"
    about = {"what": f"reference logits of weights {weights[:8]} (ctx {config.ctx}, {config.steps} steps)"}
    not_stored = Cache().store(key, {"logits": reference}, about)
    stored_note = f" ({not_stored})" if not_stored else "; stored for the cell's later sessions"
    return reference, "computed" + stored_note + (f"; {why}" if why != "not cached" else "")


def checked_step_bytes(counted: Any) -> tuple[StepBytes, str]:
    """A runner's byte counts, rebuilt from their six fields, and what is wrong with them ('' if
    nothing): each class a finite whole number of bytes >= 0, and the weights more than 0. Whatever
    is wrong makes the session `incorrect`: a floor, a speedup or a memory budget computed from
    such counts would be a number nobody can defend."""
    names = [f.name for f in fields(StepBytes)]
    if not isinstance(counted, StepBytes):
        return StepBytes(*[0] * len(names)), f"returned {type(counted).__name__}, not a qbench.api.StepBytes"
    values = {name: getattr(counted, name) for name in names}
    for name, value in values.items():
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value != int(value) or value < 0:
            return StepBytes(*[0] * len(names)), f"gives {name} {value!r}: byte counts are whole numbers >= 0"
    stored = StepBytes(**{name: int(value) for name, value in values.items()})  # its own properties are not ours
    if stored.weights <= 0:
        return stored, f"gives {stored.weights} bytes of weights: a step reads more than 0"
    return stored, ""


def apply_measure_settings(config: SessionConfig) -> None:
    """Make what the session was keyed under what runs: its switches go into this (the worker's)
    environment, where the runtimes read them; measured code other than the planning qbench's is
    refused (a node with another qbench installed)."""
    if config.measured_code and config.measured_code != measured_code_digest():
        raise UserError(
            f"this qbench's measured code (digest {measured_code_digest()}) is not the planning qbench's "
            f"({config.measured_code}, qbench {config.qbench_version})",
            "install the same qbench where the sessions run as where they are planned",
        )
    os.environ.update({**DEFAULT_MEASURE_SETTINGS, **config.measure_settings})


def run_session(config: SessionConfig) -> dict[str, Any]:
    apply_measure_settings(config)
    began = time.perf_counter()
    phases = Phases()
    device = config.device
    # the device's used memory before this process made a CUDA context: the fallback memory baseline
    used_before = energy.device_used_mib() if device == "cuda" else None
    provenance = collect(device)
    phases.done("provenance_s")
    spec = load_model_spec(config.model)
    backend = load_backend(config.backend)
    backend.check_available(device_info())
    settings = DecodeSettings(ctx=config.ctx, warmup=config.warmup, steps=config.steps, seed=config.seed)
    from qbench.model import cache as weights_cache

    use_cache = config.weights == "synthetic" and weights_cache.enabled()
    if backend.graphs_per_process and len(config.graphs) > 1:
        raise RuntimeError(f"backend {config.backend} runs one graphs setting per process; this session asks for two")
    options = LoadOptions(
        device=device,
        weights=config.weights,
        group_size=config.group_size,
        seed=config.seed,
        max_cache_len=cache_positions(config.ctx, config.warmup, config.steps),
        weights_cache=use_cache,
        runtime=config.runtime,
        graphs=config.graphs[0] if backend.graphs_per_process else None,
        # room for the energy window after each block (NVML's counter refreshes too seldom for 30 steps)
        energy_positions=energy_positions(config.ctx, config.warmup, config.steps, spec.max_positions)
        if device == "cuda"
        else 0,
    )
    if backend.builds_kernel:
        from qbench.kernels import Ticker

        with Ticker(f"{config.backend}: preparing its CUDA kernel (a first run builds it)", first_after=3):
            backend.prepare(device)
    phases.done("prepare_s")
    text, quality_reference, quality_note = None, None, ""
    if config.weights != "synthetic":
        from qbench.session.quality import reference_scores, text_ids

        text, missing = text_ids(spec, config.weights)
        if text is None:
            quality_note = f"perplexity skipped: {missing}"
        else:  # before the backend loads, so two models never share the device
            log("quality: the 16-bit reference on the built-in text")
            try:
                quality_reference, quality_note = reference_scores(spec, options, text)
            except Exception as error:  # the reference costs the KL figures, not the session
                quality_note = f"KL divergence skipped: the 16-bit reference failed ({type(error).__name__}: {error})"
                quality_note = quality_note[:300]
        phases.done("quality_reference_s")
    phase(f"load: {config.model} with {config.backend} ({config.runtime}) on {provenance['device']}")
    loaded = time.perf_counter()
    runner = backend.load(spec, options)
    load_s = time.perf_counter() - loaded
    phases.done("load_s")
    gaps = protocol_gaps(runner)
    if gaps:
        raise RuntimeError(f"backend {config.backend}'s runner does not follow qbench.api.Runner: {', '.join(gaps)}")
    stored, wrong = checked_step_bytes(runner.step_bytes(config.ctx))  # what the runner stores, by class
    linear_format = get_runtime(config.runtime).linear
    # the format's formula: a linear format's always; a whole runtime's where its backend declares one
    has_formula = linear_format or type(backend).linear_bytes is not Backend.linear_bytes
    formula = step_bytes(spec, config.ctx, backend.linear_bytes, config.group_size) if has_formula else stored
    result: dict[str, Any] = {
        "status": "ok",
        "reason": "",
        "label": backend.label(config.group_size),
        "kernel": backend.kernel,
        "compute_dtype": backend.compute_dtype,
        "runtime": runner.runtime,
        "timer": runner.timer,
        "graph_owner": runner.graphs,
        "bytes": {**asdict(stored), "weights": stored.weights, "total": stored.total},
        "measured_linear_bytes": stored.linear_weights,
        "load_s": round(load_s, 2),
        "provenance": provenance,
        "blocks": [],
        "phases": phases.seconds,
        "weights_cache": getattr(runner, "weights_cache", "off"),
        "baseline": backend.baseline,
    }
    if wrong:
        result["status"] = "incorrect"
        result["reason"] = f"runner.step_bytes({config.ctx}) {wrong}"
        return result
    if stored.linear_weights != formula.linear_weights:
        result["status"] = "incorrect"
        result["reason"] = (
            f"stored linear bytes {stored.linear_weights} differ from the format's formula {formula.linear_weights}"
        )
        return result
    differ = [name for name, value in asdict(formula).items() if getattr(stored, name) != value]
    if differ:  # counted as stored; the formula (qbench floor) says otherwise for these classes
        result["bytes_note"] = "stored bytes differ from the formula in: " + ", ".join(differ)

    if text is None and quality_note:
        result["quality"] = quality_note
    elif quality_note:
        result["quality_reference"] = quality_note
    tokens, result["tokens"] = decode_tokens(spec, config, settings.positions, text)
    tokens = tokens.to(runner.device)  # where the runner reads them (llama.cpp: host memory)
    layers = runner.quant_layers() if hasattr(runner, "quant_layers") else []
    if layers:
        phase("gate: layer check")
        layer_check = gate.check_layers(layers, DTYPES[backend.compute_dtype], config.seed)
        result["layer_check"] = asdict(layer_check)
        if not layer_check.passed:
            result["status"] = "incorrect"
            result["reason"] = (
                f"layer {layer_check.worst_layer}: relative error {layer_check.worst_relative_error:.3g} "
                f"> {gate.LAYER_TOLERANCE}"
            )
            return result
    phase("gate: reference logits")
    rounds = bool(layers) and not gate.logits_decide(config.weights, getattr(backend, "rounds_activations", False))
    if rounds:  # the layers decide, each also on the model's own activations (gate: rounded activations)
        with gate.layers_on_model_inputs(layers) as on_model:  # the reference run itself: never a stored one
            reference, result["reference"] = reference_logits(runner, backend, spec, config, settings, tokens, False)
        model_layers = on_model.result()
        result["model_layer_check"] = asdict(model_layers)
        if not model_layers.passed:
            runner.release_reference()
            result["status"] = "incorrect"
            result["reason"] = (
                f"layer {model_layers.worst_layer} on the model's own activations ({model_layers.worst_rows} rows): "
                f"relative error {model_layers.worst_relative_error:.3g} > {gate.LAYER_TOLERANCE}"
                if model_layers.calls
                else "no quantised layer ran in the reference run: the layers were not checked on the model's inputs"
            )
            return result
    else:
        reference, result["reference"] = reference_logits(runner, backend, spec, config, settings, tokens, use_cache)
    runner.release_reference()
    if device == "cuda":
        torch.cuda.empty_cache()

    if text is not None and hasattr(runner, "score"):
        phase("gate: perplexity on the built-in text")
        from qbench.session.quality import perplexity

        ppl, tokens_scored, scored = perplexity(runner, text, device)
        result["perplexity"] = {"value": ppl, "tokens": tokens_scored}
        if quality_reference is not None:
            from qbench.session.quality import kl_divergence

            result["kl"] = kl_divergence(quality_reference, scored.cpu())
    elif text is not None:
        result["quality"] = f"perplexity skipped: runtime {runner.runtime} scores no tokens"

    phases.done("gate_s")
    order = list(config.graphs) * config.rounds
    random.Random(config.seed * 1000 + config.session_index).shuffle(order)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result["host"] = host.session_host(device, config.cpu)  # this thread runs the decode loop
    meter, not_metered = energy.energy_meter(device)
    result["energy_meter"] = {"source": meter.source, "resolution": meter.resolution, "why_not": not_metered}
    if meter.counter_update_ms:
        result["energy_meter"]["counter_update_ms"] = round(meter.counter_update_ms, 2)
    for number, graphs in enumerate(order, 1):
        what = "graph replay" if graphs else "eager"
        heading = f"block {number} of {len(order)}"
        phase(f"{heading}: timing {what}, ctx {config.ctx}, {config.steps} steps")
        block: dict[str, Any] = {"graphs": graphs}
        try:
            metered = meter if meter.available else None
            first = not result["blocks"]  # the session's first block warms the prefill's kernels up first
            timed, measured = timed_block(runner, settings, tokens, graphs, device, metered, prefill_warmup=first,
                                           say=lambda part, heading=heading: phase(f"{heading}: {part}"))
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # a failed capture is this block's result, not the session's
            block.update(status="failed", reason=f"{type(error).__name__}: {error}"[:500])
            result["blocks"].append(block)
            continue
        check = gate.compare_logits(timed.logits, reference, config.weights, rounds)
        block.update(
            status="ok" if check.passed else "incorrect",
            reason=check.failure(),
            wall_ms=timed.wall_ms,
            event_ms=timed.event_ms,
            logit_check=asdict(check),
            **measured,
        )
        result["blocks"].append(block)
    phases.done("timed_s")
    if device == "cuda":  # the memory the step's processes hold right after the timed steps, one way for all
        result.update(energy.process_memory(energy.step_pids(runner), used_before))
        if linear_format:  # torch's reserve and live tensors at the same moment: what of GPU MiB its allocator holds
            result["reserved_memory_mib"] = round(torch.cuda.memory_reserved() / 2**20, 1)
            result["allocated_memory_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        elsewhere = getattr(runner, "kernels_elsewhere", "")  # e.g. an engine in its own process
        if elsewhere:
            result["step_kernels"] = elsewhere[:300]
        else:
            try:
                kernels = profile_step_kernels(runner, tokens[-1:])
            except Exception as error:  # no CUPTI in some containers: say so, claim nothing
                result["step_kernels"] = f"profiler unavailable: {error}"[:300]
            else:
                result["step_kernels"] = [dict(k, name=k["name"][:120]) for k in kernels[:12]]
                result["step_gpu_us"] = round(sum(k["gpu_us"] for k in kernels), 1)  # every kernel of the step
                if backend.kernel_pattern:
                    result["kernel_seen"] = any(re.search(backend.kernel_pattern, k["name"]) for k in kernels)
        if linear_format:
            result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        elif getattr(runner, "device_memory_mib", None) is not None:  # memory torch's allocator does not see
            result["peak_memory_mib"] = runner.device_memory_mib
        result["nvml_after"] = nvml_state()  # clocks and throttle reasons right after the timed steps
    phases.done("profile_s")
    # what the backend keeps for the next session (gemlite: its autotune winners), said in the notes
    result["runtime_notes"] = list(getattr(runner, "notes", [])) + list(getattr(backend, "finish", list)())
    result["session_s"] = round(time.perf_counter() - began, 2)
    return result

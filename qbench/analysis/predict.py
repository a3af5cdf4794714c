"""`qbench predict`: ms/step on a GPU you do not have, from measurements stored on one you had.

Every figure this module returns is a prediction and says so; nothing here is written to a store.
The model, per calibration cell (a backend under a runtime, measured on GPU C with its step profiled):

  kernel classes  weights    matrix kernels (GEMV/GEMM, quantised matmuls): they read the linear
                             weights, their biases and the lm_head (W bytes)
                  attention  attention kernels: they read the KV cache (K bytes)
                  small      every other kernel, and whatever the stored profile does not name:
                             norms, rotary, elementwise, copies; latency-bound
  achieved        f_w = W / (t_w x peak_C)        f_a = K / (t_a x peak_C)
  per layer       s = t_small / layers_C
  on target G     gpu_G = W' / (f_w x peak_G) + K' / (f_a x peak_G) + s x layers' x clock_C / clock_G
  graphs          graph_G = gpu_G x (graph ms measured on C / profiled step GPU ms on C)
  eager           eager_G = max(graph_G, host_G), host_G = eager_C x layers' / layers_C x launch_G / launch_C
                  (eager is the slower of the GPU's time and the host's time to launch the step; on C
                  the eager step is taken as the host's time, an upper bound where C was GPU-bound)
                  launch: the host's cost of one kernel launch (`launch us` of the calibration
                  sessions; for the target, --launch-us, else the calibration host's, said so)

W', K' and layers' are the predicted configuration's, from the stated byte formula (qbench floor).
The interval is the calibration cell's session interval, relative, applied to the prediction: it
carries the measurement's spread, not the model's error (the validation in results/ measures that).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from statistics import median
from typing import Any

from qbench.errors import UserError

ATTENTION = re.compile(r"sdpa|flash|fmha|attention|attn|softmax", re.IGNORECASE)
MATRIX = re.compile(
    r"gemv|gemm|nvjet|cutlass|xmma|marlin|q_half|kgemm|int4pack|tinygemm|mul_mat|matmul|splitk", re.IGNORECASE
)


def kernel_class(name: str) -> str:
    if ATTENTION.search(name):
        return "attention"
    if MATRIX.search(name):
        return "weights"
    return "small"


@dataclass(frozen=True)
class Calibration:
    """What one measured cell on GPU C gives the model."""

    gpu: str
    model: str
    backend: str
    runtime: str
    ctx: int
    layers: int
    weight_bytes: int
    kv_bytes: int
    t_weights_us: float
    t_attention_us: float
    t_small_us: float
    gpu_us: float  # the profiled step's GPU time (all kernels)
    graph_ms: float | None
    graph_interval: tuple[float, float] | None
    eager_ms: float | None
    eager_interval: tuple[float, float] | None
    launch_us: float | None
    sessions: int
    run_ids: tuple[str, ...]

    @property
    def f_weights(self) -> float | None:
        return None if not self.t_weights_us else self.weight_bytes / (self.t_weights_us * 1e-6)

    @property
    def f_attention(self) -> float | None:
        return None if not self.t_attention_us else self.kv_bytes / (self.t_attention_us * 1e-6)


def _class_times(results: list[dict]) -> tuple[float, float, float, float]:
    """Median over sessions of the GPU time per kernel class and of the step's total, in us."""
    per_session = []
    for result in results:
        kernels = result.get("step_kernels")
        if not isinstance(kernels, list) or not kernels:
            continue
        times = {"weights": 0.0, "attention": 0.0, "small": 0.0}
        for kernel in kernels:
            times[kernel_class(kernel["name"])] += kernel["gpu_us"]
        total = result.get("step_gpu_us") or sum(times.values())
        times["small"] += max(0.0, total - sum(times.values()))  # kernels the profile does not name
        per_session.append((times["weights"], times["attention"], times["small"], total))
    if not per_session:
        raise ValueError("no profiled step")
    return tuple(median(column) for column in zip(*per_session, strict=True))  # type: ignore[return-value]


def calibrations(sessions: list[dict]) -> list[Calibration]:
    """One Calibration per stored cell that has a profiled step and a timed row, measured under qbench's
    default measuring switches: a prediction is of a runtime as it runs by default, so a cell timed with
    QBENCH_LEAN_* set otherwise (`compare --vary`) calibrates nothing."""
    from collections import defaultdict

    from qbench.analysis.aggregate import switched
    from qbench.report import aggregate
    from qbench.specs import load_model_spec

    rows = aggregate(sessions)
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for record in sessions:
        by_cell[record["cell_hash"]].append(record)
    found = []
    for cell, records in by_cell.items():
        results = [r["result"] for r in records if r["result"].get("status") == "ok"]
        try:
            t_w, t_a, t_s, gpu_us = _class_times(results)
        except ValueError:
            continue
        config = records[0]["config"]
        if switched(config):
            continue
        stored = results[0].get("bytes", {})
        try:
            layers = load_model_spec(config["model"]).num_layers
        except UserError:
            continue
        timed = {r["graphs"]: r for r in rows if r["cell_hash"] == cell and r.get("ms_per_step")}
        graph, eager = timed.get("on"), timed.get("off")
        found.append(
            Calibration(
                gpu=records[0]["gpu"],
                model=config["model"].rsplit("/", 1)[-1],
                backend=config["backend"],
                runtime=config.get("runtime", "hf"),
                ctx=config["ctx"],
                layers=layers,
                weight_bytes=stored.get("linear_weights", 0) + stored.get("lm_head", 0) + stored.get("biases", 0),
                kv_bytes=stored.get("kv_cache", 0),
                t_weights_us=t_w,
                t_attention_us=t_a,
                t_small_us=t_s,
                gpu_us=gpu_us,
                graph_ms=graph["ms_per_step"] if graph else None,
                graph_interval=_interval(graph),
                eager_ms=eager["ms_per_step"] if eager else None,
                eager_interval=_interval(eager),
                launch_us=(eager or graph or {}).get("launch_us"),
                sessions=len(results),
                run_ids=tuple(sorted({r["run_id"] for r in records})),
            )
        )
    return found


def _interval(row: dict | None) -> tuple[float, float] | None:
    interval = (row or {}).get("ms_interval")
    if interval is None or interval.method == "n/a":
        return None
    return interval.low, interval.high


@dataclass(frozen=True)
class Prediction:
    gpu: str
    model: str
    backend: str
    runtime: str
    ctx: int
    graphs: str
    ms: float
    low: float | None
    high: float | None
    floor_ms: float
    pct_of_floor: float
    calibrated_on: str
    note: str
    predicted: bool = True
    # with --against: the same cell measured on the target (a validation), and the prediction's error
    measured_ms: float | None = None
    measured_low: float | None = None
    measured_high: float | None = None
    error_pct: float | None = None


def predict_one(
    calibration: Calibration,
    target: Any,
    source: Any,
    weight_bytes: int,
    kv_bytes: int,
    layers: int,
    graphs: bool,
    launch_us: float | None,
) -> tuple[float, float | None, float | None, str]:
    """(ms, low, high, note) on `target` (a GpuSpec) from one calibration measured on `source`."""
    peak_c = source.peak_bandwidth_gbps * 1e9
    peak_g = target.peak_bandwidth_gbps * 1e9
    gpu_us = calibration.t_small_us / calibration.layers * layers * source.boost_clock_mhz / target.boost_clock_mhz
    if weight_bytes:
        if not calibration.f_weights:
            raise ValueError("the calibration profile names no matrix kernel")
        gpu_us += weight_bytes / (calibration.f_weights / peak_c * peak_g) * 1e6
    if kv_bytes and calibration.f_attention:
        gpu_us += kv_bytes / (calibration.f_attention / peak_c * peak_g) * 1e6
    gpu_ms = gpu_us / 1e3
    note = ""
    if graphs:
        measured, interval = calibration.graph_ms, calibration.graph_interval
        if measured is None:
            raise ValueError("the calibration cell has no graph-mode timing")
        ms = gpu_ms * measured / (calibration.gpu_us / 1e3)
    else:
        measured, interval = calibration.eager_ms, calibration.eager_interval
        if measured is None:
            raise ValueError("the calibration cell has no eager timing")
        host_scale = 1.0
        if launch_us and calibration.launch_us:
            host_scale = launch_us / calibration.launch_us
        else:
            note = "eager assumes a host whose launch cost is the calibration host's (give --launch-us)"
        # eager = max(the GPU's time, the host's time to launch the step): on C the eager step is
        # taken as the host's time (an upper bound where C's eager step was GPU-bound)
        replay_ratio = (calibration.graph_ms or measured) / (calibration.gpu_us / 1e3)
        gpu_bound, host_bound = gpu_ms * replay_ratio, measured * layers / calibration.layers * host_scale
        ms = max(gpu_bound, host_bound)
        if gpu_bound > host_bound and calibration.graph_ms:  # the GPU's time: its spread is graph mode's
            measured, interval = calibration.graph_ms, calibration.graph_interval
            note = "eager predicted GPU-bound on the target: the GPU's time, not the host's"
    low = high = None
    if interval:
        low, high = ms * interval[0] / measured, ms * interval[1] / measured
    return ms, low, high, note


def _choose(candidates: list[Calibration], model: str, ctx: int) -> Calibration:
    """The calibration closest to what is predicted: the same model first, then the nearest context,
    then the most sessions."""
    return min(candidates, key=lambda c: (c.model != model, abs(c.ctx - ctx), -c.sessions, c.gpu))


def predict(
    model: str,
    gpu: str,
    backends: list[str],
    runtimes: tuple[str, ...],
    contexts: tuple[int, ...],
    graphs: tuple[bool, ...],
    sessions: list[dict],
    calibrate_on: str = "auto",
    launch_us: float | None = None,
    group_size: int = 128,
    against: list[dict] | None = None,
    calibrated: list[Calibration] | None = None,
) -> tuple[list[Prediction], dict[str, str]]:
    """Predictions for every (backend, runtime, ctx, graphs) it can calibrate, and why not for the rest.

    `against`: sessions measured on the target GPU (another store). Each prediction is then put beside
    the same cell's measurement there, with its error; an eager prediction without --launch-us takes
    that cell's measured host launch cost (the validation gives the model the target host's launch
    cost, not its timings). Those sessions never calibrate.
    `calibrated`: calibrations to use instead of those of `sessions` (the shipped ones,
    shipped_calibration()); they may be of the target card itself (a store's own measurements of the
    target never calibrate, the shipped ones were measured elsewhere)."""
    from qbench.analysis.aggregate import switched
    from qbench.analysis.floor import step_bytes
    from qbench.compare import check_ctx
    from qbench.registry import load_backend
    from qbench.runtimes import get_runtime
    from qbench.specs import load_gpu_spec, load_model_spec

    if launch_us is not None and not 0 < launch_us < math.inf:  # NaN fails both comparisons
        raise UserError(
            f"--launch-us must be a finite number of microseconds above 0, got {launch_us!r}",
            "e.g. --launch-us 5, or leave it out to use the calibration host's",
        )
    spec = load_model_spec(model)
    check_ctx(spec, contexts)
    target = load_gpu_spec(gpu)
    if not target.peak_bandwidth_gbps or not target.boost_clock_mhz:
        raise UserError(f"GPU spec {gpu} lacks the peak bandwidth or clock the model needs")
    if calibrated is None:
        found = [c for c in calibrations(sessions) if c.gpu != target.name]
    else:
        found = list(calibrated)
    if calibrate_on != "auto":
        found = [c for c in found if c.gpu == calibrate_on]
    if not found:
        where = "" if calibrate_on == "auto" else f" on {calibrate_on}"
        # cells measured under other switches (compare --vary) never calibrate: say so where they were all there was
        left_out = len({s["cell_hash"] for s in sessions if switched(s["config"])}) if calibrated is None else 0
        why = f"; {left_out} cell(s) under non-default QBENCH_LEAN_* switches never calibrate" if left_out else ""
        raise UserError(
            f"no profiled, timed measurement{where} to calibrate on (a GPU other than {target.name}){why}",
            "run `qbench compare` on a GPU you have (it profiles each cell), then predict from its --db",
        )
    measured = _measured_cells(against, target.name) if against is not None else {}
    if against is not None and not measured:
        raise UserError(
            f"--against holds no timed measurement on {target.name}",
            f"point --against at a store `qbench compare` wrote on a {target.name}",
        )
    predictions: list[Prediction] = []
    skipped: dict[str, str] = {}
    for name in backends:
        backend = load_backend(name)
        own = tuple(r for r in backend.runtimes if not get_runtime(r).linear)
        for runtime in own[:1] or tuple(r for r in runtimes if r in backend.runtimes):
            candidates = [c for c in found if c.backend == name and c.runtime == runtime]
            if not candidates:
                skipped[f"{name} ({runtime})"] = "no stored measurement of it to calibrate on"
                continue
            for ctx in contexts:
                calibration = _choose(candidates, spec.name, ctx)
                source = load_gpu_spec(calibration.gpu)
                if get_runtime(runtime).linear:
                    counted = step_bytes(spec, ctx, backend.linear_bytes, group_size)
                    weight_bytes = counted.linear_weights + counted.lm_head + counted.biases
                    kv_bytes, total = counted.kv_cache, counted.total
                elif calibration.model == spec.name:  # a whole engine's bytes are its own: same model only
                    weight_bytes = calibration.weight_bytes
                    kv_bytes = round(calibration.kv_bytes * ctx / calibration.ctx)
                    total = weight_bytes + kv_bytes
                else:
                    skipped[f"{name} ({runtime})"] = f"its bytes are known for {calibration.model} only"
                    continue
                for mode in graphs:
                    truth = measured.get((spec.name, name, runtime, ctx, "on" if mode else "off"))
                    host_launch = launch_us
                    if host_launch is None and truth is not None and not mode:
                        host_launch = truth.get("launch_us")
                    try:
                        ms, low, high, note = predict_one(
                            calibration, target, source, weight_bytes, kv_bytes, spec.num_layers, mode, host_launch
                        )
                    except ValueError as error:
                        skipped[f"{name} ({runtime}) graphs {'on' if mode else 'off'}"] = str(error)
                        continue
                    floor = total / (target.peak_bandwidth_gbps * 1e9) * 1e3
                    predictions.append(
                        Prediction(
                            gpu=target.name,
                            model=spec.name,
                            backend=name,
                            runtime=runtime,
                            ctx=ctx,
                            graphs="on" if mode else "off",
                            ms=ms,
                            low=low,
                            high=high,
                            floor_ms=floor,
                            pct_of_floor=100 * floor / ms,
                            calibrated_on=(
                                f"{calibration.gpu}: {calibration.model} ctx {calibration.ctx}, "
                                f"{calibration.sessions} session(s), run {', '.join(calibration.run_ids)}"
                            ),
                            note=note,
                            **_beside(truth, ms),
                        )
                    )
    return predictions, skipped


def _measured_cells(sessions: list[dict], gpu: str) -> dict[tuple, dict]:
    """Timed rows of `gpu` by (model, backend, runtime, ctx, graphs); the cell with the most sessions
    where a store holds several of one key (other group sizes, weights). Only cells measured under the
    default measuring switches: what a prediction (of the defaults, `calibrations`) is put beside."""
    from qbench.report import aggregate

    cells: dict[tuple, dict] = {}
    for row in aggregate([s for s in sessions if s["gpu"] == gpu]):
        if not row.get("ms_per_step") or row["switched"]:
            continue
        key = (row["model"], row["backend"], row["runtime"], row["ctx"], row["graphs"])
        if key not in cells or len(row["session_medians_ms"]) > len(cells[key]["session_medians_ms"]):
            cells[key] = row
    return cells


def _beside(truth: dict | None, ms: float) -> dict[str, float | None]:
    if truth is None:
        return {}
    interval = _interval(truth)
    return {
        "measured_ms": truth["ms_per_step"],
        "measured_low": interval[0] if interval else None,
        "measured_high": interval[1] if interval else None,
        "error_pct": 100 * (ms - truth["ms_per_step"]) / truth["ms_per_step"],
    }


def render(predictions: list[Prediction], skipped: dict[str, str], fmt: str) -> str:
    """The predictions in format `fmt` (a qbench.render.formats.FORMATS name)."""
    from qbench.render.formats import FORMATS

    return FORMATS[fmt].render(document(predictions, skipped), False)


def document(predictions: list[Prediction], skipped: dict[str, str]) -> Any:
    """The predictions as a Document: a PREDICTED title, the table, its notes, what was not predicted,
    the errors against --against where measured, and what every figure is. JSON carries the
    predictions and what was skipped; CSV one row per prediction."""
    from dataclasses import asdict

    from qbench.render.document import Document, Gap, Prose, Table

    validated = any(p.measured_ms is not None for p in predictions)
    headers = ["backend", "runtime", "ctx", "graphs", "PREDICTED ms/step", "interval", "% floor"]
    if validated:
        headers += ["MEASURED ms/step (--against)", "error"]
    headers.append("calibrated on")
    body = []
    for p in predictions:
        line = [
            p.backend,
            p.runtime,
            p.ctx,
            p.graphs,
            f"{p.ms:.2f}",
            f"{p.low:.2f}-{p.high:.2f}" if p.low is not None else "",
            f"{p.pct_of_floor:.0f}%",
        ]
        if validated:
            line += [_measured_text(p), f"{p.error_pct:+.0f}%" if p.error_pct is not None else "not measured"]
        body.append(line + [p.calibrated_on])
    first = predictions[0] if predictions else None
    title = f"PREDICTED (not measured): {first.model} on {first.gpu}" if first else "nothing predicted"
    blocks: list[Any] = [Prose(title, "  "), Gap(), Table.of(headers, body)]
    notes = sorted({p.note for p in predictions if p.note})
    blocks += [Gap()] + [Prose(f"- {note}", "  ") for note in notes] if notes else []
    unpredicted = [Prose(f"- not predicted: {what}: {why}", "  ") for what, why in skipped.items()]
    blocks += [Gap()] + unpredicted if skipped else []
    if validated:
        blocks += [Gap()] + [Prose(_worst_error(predictions, graphs), "  ") for graphs in ("on", "off")]
    blocks += [
        Gap(),
        Prose(
            "Every figure above is predicted by the model in README 'Predicting a GPU you do not have', calibrated "
            "on the stored measurements named; the interval is the calibration cell's session interval, scaled "
            "(measurement spread, not model error); % floor = bytes/step / the target's datasheet bandwidth "
            "/ predicted ms.",
            "  ",
        ),
    ]
    data = {"predicted": [asdict(p) for p in predictions], "skipped": skipped}
    return Document(title, blocks, data=data, records=[asdict(p) for p in predictions])


def _measured_text(p: Prediction) -> str:
    if p.measured_ms is None:
        return ""
    spread = f" ({p.measured_low:.2f}-{p.measured_high:.2f})" if p.measured_low is not None else ""
    return f"{p.measured_ms:.2f}{spread}"


def _worst_error(predictions: list[Prediction], graphs: str) -> str:
    errors = [p.error_pct for p in predictions if p.graphs == graphs and p.error_pct is not None]
    label = "graphs on" if graphs == "on" else "graphs off (eager)"
    if not errors:
        return f"- {label}: no measured cell to compare with"
    worst = max(errors, key=abs)
    typical = median(abs(error) for error in errors)
    return f"- {label}: {len(errors)} cell(s) measured; worst error {worst:+.0f}%, median |error| {typical:.0f}%"


# ---- the calibration shipped with qbench ---------------------------------------------------------
# qbench/data/SHIPPED_CALIBRATION: the Calibrations of one committed store (SHIPPED_STORE, measured on
# an H100), so `qbench predict` and `qbench compare --gpu G` on a machine without G answer on a fresh
# install. tools/calibration.py writes it from the store; tests/test_headline.py checks they agree.
SHIPPED_CALIBRATION = "calibration-h100.json"
# bf16, torch-int4, awq-marlin, gptq-exllamav2 and bnb-nf4 under hf and lean, qwen2.5-7b ctx 2048,
# graphs A/B, every step profiled (results/h100/lean-gemv/README.md)
SHIPPED_STORE = "results/h100/lean-gemv/gemv10.sqlite"


def _significant(value: Any) -> Any:
    """Floats to 9 significant digits (the stored file does not hang on the last bit of a library's
    quantile function); lists and tuples element by element."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, list | tuple):
        return [_significant(item) for item in value]
    return value


def calibration_document(sessions: list[dict], store: str) -> dict:
    """The shipped calibration's content: every Calibration the stored sessions give, and where they
    came from (the card, the device, the store file, its runs and their date, from the run ids)."""
    from dataclasses import asdict

    found = sorted(calibrations(sessions), key=lambda c: (c.model, c.ctx, c.backend, c.runtime))
    if not found:
        raise UserError(f"{store} holds no profiled, timed measurement to calibrate on")
    runs = sorted({run for c in found for run in c.run_ids})
    devices = {r["result"].get("provenance", {}).get("device", "") for r in sessions if r["run_id"] in runs}
    days = sorted({f"{run[:4]}-{run[4:6]}-{run[6:8]}" for run in runs})  # run ids start with the UTC date
    return {
        "about": "qbench's shipped calibration (qbench predict without --db, qbench compare --gpu G on a "
        "machine without G): the calibration cells of the store named, written by tools/calibration.py",
        "card": ", ".join(sorted({c.gpu for c in found})),
        "device": ", ".join(sorted(devices - {""})),
        "store": store,
        "run_ids": runs,
        "date": days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}",
        "calibrations": [{k: _significant(v) for k, v in asdict(c).items()} for c in found],
    }


def document_text(document: dict) -> str:
    import json

    return json.dumps(document, indent=1) + "\n"


def shipped_calibration() -> tuple[list[Calibration], dict]:
    """The shipped Calibrations, and the document's provenance (card, device, store, run_ids, date)."""
    import json
    from importlib import resources

    document = json.loads(resources.files("qbench").joinpath("data", SHIPPED_CALIBRATION).read_text())
    found = []
    for cell in document["calibrations"]:
        pairs = {name: tuple(cell[name]) if cell[name] else None for name in ("graph_interval", "eager_interval")}
        found.append(Calibration(**{**cell, **pairs, "run_ids": tuple(cell["run_ids"])}))
    return found, {key: value for key, value in document.items() if key != "calibrations"}


def shipped_label(source: dict) -> str:
    runs = ", ".join(source["run_ids"])
    return (
        f"calibrated on the shipped {source['card']} measurements ({source['device']}; store {source['store']}, "
        f"run(s) {runs}, {source['date']})"
    )


# `qbench compare --graphs` as predicted: auto is what a GPU would run (both)
COMPARE_GRAPHS = {"auto": (False, True), "both": (False, True), "on": (True,), "off": (False,)}


def shipped_for_compare(config: Any) -> tuple[list[Prediction], dict[str, str], dict, list[str]]:
    """What `qbench compare` (a CompareConfig) answers for a GPU this machine is not: the PREDICTED
    rows from the shipped calibration for its backends ('available': every backend the calibration
    covers), runtimes, contexts and graphs settings. Returns the predictions, why not for the rest,
    the calibration's provenance and, for 'available', the known backends it does not cover."""
    from qbench.compare import resolve_group_size
    from qbench.registry import backend_names
    from qbench.specs import load_model_spec

    shipped, source = shipped_calibration()
    uncovered: list[str] = []
    backends = list(config.backends)
    if config.backends == ("available",):
        covered = {c.backend for c in shipped}
        backends = [name for name in backend_names() if name in covered]
        uncovered = [name for name in backend_names() if name not in covered]
    group_size = resolve_group_size(config.group_size, load_model_spec(config.model))
    predictions, skipped = predict(
        config.model,
        config.gpu,
        backends,
        config.runtimes,
        config.ctx,
        COMPARE_GRAPHS[config.graphs],
        [],
        group_size=group_size,
        calibrated=shipped,
    )
    return predictions, skipped, source, uncovered


# ---- how long a run on a CPU will take, said before it starts -----------------------------------
# On a CPU, a model whose 16-bit weights pass this many bytes takes minutes a session (qwen2.5-7b reads
# 15 GB a step and computes 2 x 7.6e9 FLOPs a prefill token): `qbench compare` says so, with an
# estimate, before its first session.
CPU_WARN_BYTES = 4 * 10**9


def cpu_probe() -> tuple[float, float]:
    """(copy GB/s, bf16 matmul GFLOP/s) of this CPU now, in about a second: 256 MiB copied as a session
    measures it (qbench.session.provenance), and the best of 3 bf16 matmuls of a prefill's shape (512 tokens
    x 2048 x 2048). Imported here only: the parent holds no torch otherwise (a CPU has no CUDA context)."""
    import time

    import torch

    from qbench.session.provenance import copy_bandwidth_gbps

    tokens, features = 512, 2048
    x = torch.ones(tokens, features, dtype=torch.bfloat16)
    w = torch.ones(features, features, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - began)
    return copy_bandwidth_gbps("cpu", 256, repeats=3), 2 * tokens * features * features / best / 1e9


def cpu_run_warning(the_plan: Any, probe: Any = None) -> str | None:
    """For a compare Plan on a CPU with a model past CPU_WARN_BYTES: the estimated time of its
    sessions and how to get a quicker answer (None for a smaller model). Per session:
      decode   (warm-up + timed steps) x rounds x bytes/step / the copy bandwidth measured now
      prefill  (rounds + 1) prefills (the first untimed) x 2 FLOPs x parameters x ctx / the bf16
               matmul rate measured now
    Loading, quantising and the correctness gate's reference run come on top; a busy machine's
    probe is slow, so is its run."""
    from qbench.analysis.floor import step_bytes
    from qbench.registry import load_backend
    from qbench.specs import load_model_spec

    config = the_plan.config
    spec = load_model_spec(config.model)
    sixteen_bit = step_bytes(spec, max(config.ctx))
    if sixteen_bit.weights < CPU_WARN_BYTES:
        return None
    copy_gbps, gflops = (probe or cpu_probe)()
    parameters = (sixteen_bit.linear_weights + sixteen_bit.lm_head) / 2
    seconds, sessions = 0.0, 0
    for name in the_plan.backends:
        backend = load_backend(name)
        for ctx in config.ctx:
            counted = step_bytes(spec, ctx, backend.linear_bytes, the_plan.group_size)
            decode = (config.warmup + config.steps) * config.rounds * counted.total / (copy_gbps * 1e9)
            prefill = (config.rounds + 1) * 2 * parameters * ctx / (gflops * 1e9)
            count = len(the_plan.runtimes.get(name, ("hf",))) * the_plan.sessions
            seconds += (decode + prefill) * count
            sessions += count
    if not sessions:
        return None
    return (
        f"{spec.name} on a CPU: {sessions} session(s), about {seconds / 60:.0f} min by estimate "
        f"(per session: (warm-up + timed steps) x bytes/step / {copy_gbps:.1f} GB/s copy bandwidth, plus "
        f"{config.rounds + 1} prefills x 2 x {parameters / 1e9:.1f}e9 parameters x ctx / {gflops:.0f} GFLOP/s "
        f"bf16 matmul, both measured now; loading, quantising and the gate come on top). A quicker answer: "
        f"`qbench compare --model {config.model} --gpu h100-sxm5` (or `qbench predict --model {config.model} "
        f"--gpu G` for any GPU in `qbench gpus`) predicts it from the shipped H100 measurements in seconds, "
        f"running nothing; or measure a small model here: `qbench compare --model qwen2.5-0.5b`"
    )


def compare_answer(configs: list, absent: Any, command: str, prose: bool) -> tuple[Any, list[str]]:
    """What `qbench compare --gpu G` answers on a machine without G (`absent`: the GpuNotHere its
    planning raised, raised again where G's spec gives nothing to predict from): the PREDICTED Document
    of every config (CompareConfig) from the shipped calibration, and the lines saying nothing was
    measured and how to measure it (`command`: the command as typed), added to the Document where its
    format has `prose`."""
    from dataclasses import replace

    from qbench.compare import predict_command
    from qbench.render.document import Gap, Prose

    if not absent.wanted.peak_bandwidth_gbps or not absent.wanted.boost_clock_mhz:
        raise absent  # nothing to predict it from (a CPU spec): the one-line error
    answers = [shipped_for_compare(config) for config in configs]
    predictions = [p for answer in answers for p in answer[0]]
    skipped = {what: why for answer in answers for what, why in answer[1].items()}
    source, uncovered = answers[0][2], answers[0][3]
    output = document(predictions, skipped)
    output.data = {**output.data, "measured": False, "calibration": source}
    output.blocks = [block for index, answer in enumerate(answers) for block in (
        ([Gap()] if index else []) + document(answer[0], answer[1]).blocks)]  # fmt: skip
    wanted = absent.wanted
    predicted = tuple(dict.fromkeys(p.backend for p in predictions)) or configs[0].backends
    lines = [
        f"qbench: this machine has no {wanted.name} GPU (detected {absent.seen}): no session ran and nothing "
        f"was stored; every figure above is PREDICTED, {shipped_label(source)}.",
        f"To measure it for real, run this on a machine whose GPU is {wanted.description}:",
        f"  {command}",
        "More prediction options (--launch-us for the eager rows, --db to calibrate on your own store):",
        f"  {predict_command(replace(configs[0], backends=predicted))}",
    ]
    if uncovered:
        lines.append(f"Not in the shipped calibration, so not predicted: {', '.join(uncovered)}.")
    varied = sorted({name for config in configs for name, _ in config.vary})
    if varied:  # a prediction is of the runtimes' defaults (calibrations)
        lines.append(f"--vary {', '.join(varied)}: not predicted; every row above is of the default switches.")
    if prose:  # said in the document, prose at the table's width; a command stays whole
        output.blocks += [Gap()] + [Prose(line, "  ", wrap=not line.startswith("  ")) for line in lines]
    return output, lines

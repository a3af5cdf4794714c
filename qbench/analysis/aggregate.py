"""From stored sessions to rows: one row per cell and graphs setting (and the replication, kernel and
session views' rows). Pure functions over the stored records; qbench.report turns rows into Documents.

A cell is one whole configuration (model, device, backend, ctx, weights, group size, warm-up, steps,
rounds, seed, pinning: the stored cell hash); one row per cell and graphs setting. Sessions pool
into a row only when their configurations are identical, and ratios compare rows whose
configurations differ in the backend (and its group size) alone. Per row:
  ms/step         median over sessions of each session's median step (CUDA-event time on a GPU,
                  wall clock on a CPU); `wall_ms` is the synchronised wall clock on a GPU too.
  floor ms        bytes/step / bandwidth, at the datasheet peak and at the copy bandwidth measured
                  in the sessions (median); % of floor = floor ms / ms/step.
  expected x      bf16 bytes/step / backend bytes/step (the promised traffic cut)
  realised x      bf16 ms/step / backend ms/step, same model, GPU, ctx and graphs setting
  realisation     realised / expected, in % (realisation_pct in exports; every percentage is 0-100)
  graphs x        eager ms / graph ms, per session (paired), on the graphs=on row
  launch us       host cost of one kernel launch, measured around each timed block (qbench.session.host):
                  median over the sessions of each session's median probe
  TTFT ms         the prefill to ctx that opens every block (time to first token): median over
                  sessions of each session's median block (CUDA events where steps have them)
  J/tok, W        energy of the timed steps / steps, and / their wall time (qbench.session.energy): median
                  over sessions; `energy_source` names the counter, "not measured" where none
  GPU MiB         GPU memory the step's processes hold after the timed steps, CUDA context included
                  (NVML; `gpu_memory_source` says how): the one memory figure cells compare;
                  `peak_memory_mib` is torch's allocator peak, where the runtime has one
  reserved MiB    torch's allocator reserve (cached blocks included) when GPU MiB was read, in the
                  session that gave GPU MiB; GPU MiB less it is what torch's allocator does not hold;
                  `allocated_memory_mib` (exports) its live tensors then: reserved less it is cached
A cell whose correctness gate failed in any session shows `incorrect` and no timing figures.
Flags: impossible, noisy, throttled n/N, kernel-not-seen, host-variable, gate-edge (see FLAG_TEXT).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from statistics import median
from typing import Any

from qbench.analysis import stats
from qbench.errors import UserError
from qbench.registry import BUILT_IN_ORDER
from qbench.runtimes import DEFAULT, get_runtime
from qbench.session.gate_limits import EDGE_ERROR, EDGE_TOP1
from qbench.settings import DEFAULT_MEASURE_SETTINGS, MEASURE_VARIABLES, switches_text
from qbench.specs import load_gpu_spec

PERPLEXITY_BOUND = 1.75  # real weights: a 4-bit backend's perplexity may be at most this x bf16's
NOISY_CV = 0.10  # coefficient of variation of steps inside a session above which a cell is noisy
# A cell's host probes (launch cost, fixed workload; before and after every timed block of every
# session) whose largest is more than this times their smallest: the host changed under the cell.
HOST_VARIABLE_SPREAD = 1.25
# NVML clock-event reasons that mean the clocks were held down (power, thermal, hardware slowdown)
THROTTLE_MASK = 0x4 | 0x8 | 0x40 | 0x80 | 0x100

def _session_steps(block: dict, device: str) -> list[float]:
    return block.get("event_ms") or block["wall_ms"] if device == "cuda" else block["wall_ms"]


def _peak_bandwidth(gpu_name: str) -> float | None:
    try:
        return load_gpu_spec(gpu_name).peak_bandwidth_gbps
    except Exception:
        return None  # a GPU without a spec: no datasheet figure


SPEC_AT_EXPORT = "spec at export (stored before qbench kept the bandwidth with each session)"


def _stored_peak(records: list[dict], gpu_name: str) -> tuple[float | None, str]:
    """The datasheet bandwidth of a cell's floor and its source: the one its first session stored
    (decided when it was measured, so editing a GPU file moves no stored floor); for sessions stored
    before that, today's spec, and the source says so."""
    for record in records:
        if "peak_bandwidth_gbps" in record["result"]:
            result = record["result"]
            return result["peak_bandwidth_gbps"], result.get("bandwidth_source", "")
    return _peak_bandwidth(gpu_name), SPEC_AT_EXPORT


NOT_STORED = "not stored (measured before qbench kept it)"


def measure_settings_text(config: dict) -> str:
    """A session's measuring switches as one line: `QBENCH_LEAN_GEMV=auto, ...`."""
    chosen = config.get("measure_settings")
    return switches_text(chosen) if chosen is not None else NOT_STORED


# Configuration keys that may differ between rows that are compared with each other.
COMPARED_ACROSS = ("backend", "group_size", "session_index", "runtime", "graphs")
CONFIG_COLUMNS = ("steps", "warmup", "group_size", "rounds", "seed", "cpu")
FLAG_TEXT = {
    "impossible": "faster than the floor at datasheet bandwidth",
    "noisy": f"step-time CV above {NOISY_CV:.0%} within sessions",
    "throttled": "NVML reported a power, thermal or hardware slowdown after the timed steps, in n of N sessions",
    "kernel-not-seen": "the profiled step never ran the backend's kernel",
    "host-variable": f"eager: the host's launch cost or fixed workload varied more than {HOST_VARIABLE_SPREAD:.2f}x "
    "across the cell's probes (before and after each timed block of each session)",
    "gate-edge": f"passed the correctness gate close to a limit: worst logit error at least {EDGE_ERROR:.0%}, or "
    f"top-1 agreement less than {float(EDGE_TOP1):.0%} above its threshold (gate_* columns)",
    "layers-only": "rounds its activations: on synthetic weights the logits cannot tell its kernel from rounding "
    "noise, so the gate decided on its layers, each also on the model's own activations; check it on real "
    "weights before relying on it",
}


def stored_label(label: str) -> str:
    """The label as qbench writes it now: stores from before one convention labelled bnb-nf4's
    block size `(b64)`; a block of N weights sharing a scale is a group, `(gN)`."""
    return re.sub(r" \(b(\d+)\)$", r" (g\1)", label)


def comparison_key(config: dict, gpu: str, across: tuple[str, ...] = COMPARED_ACROSS) -> str:
    """What rows must share to be compared (ratios, one table section): all but COMPARED_ACROSS."""
    key = {k: v for k, v in config.items() if k not in across}
    key["gpu"] = gpu
    return json.dumps(key, sort_keys=True)


def switched(config: dict) -> dict[str, str] | None:
    """The measuring switches a session ran under that are not qbench's defaults ({} = all default;
    None: stored before qbench kept them). A switch a store predates ran at its default then."""
    chosen = config.get("measure_settings")
    if chosen is None:
        return None
    return {k: v for k, v in chosen.items() if DEFAULT_MEASURE_SETTINGS.get(k) != v}


def with_switches(runtime: str, chosen: dict[str, str] | None) -> str:
    """A runtime as it ran: with the measuring switches not at their defaults (`switched`), as in
    `lean (QBENCH_LEAN_FOLD=on)`; the runtime alone at its defaults (or stored before switches were)."""
    return f"{runtime} ({switches_text(chosen)})" if chosen else runtime


def aggregate(sessions: list[dict]) -> list[dict[str, Any]]:
    cells: dict[str, list[dict]] = defaultdict(list)
    for record in sessions:
        cells[record["cell_hash"]].append(record)
    rows = []
    for cell, records in cells.items():
        modes = sorted({bool(g) for r in records for g in r["config"]["graphs"]})
        for graphs in modes:
            rows.append(_cell_row(cell, graphs, records))
    _add_ratios(rows)
    order = {name: i for i, name in enumerate(BUILT_IN_ORDER)}
    rows.sort(
        key=lambda r: (
            r["model"],
            r["gpu"],
            r["ctx"],
            r["comparison"],
            get_runtime(r["runtime"]).order,
            r["runtime"],
            order.get(r["backend"], 9),
            r["backend"],
            r["group_size"] or 0,
            r["graphs"],
        )
    )
    return rows


def _host_summary(row: dict, host_blocks: list[list[dict]]) -> None:
    """Host columns from each session's probes (a list of probe dicts per session)."""
    sessions = [probes for probes in host_blocks if probes]
    if not sessions:
        return
    for key in ("launch_us", "op_us", "cpu_ms"):
        measured = [[p[key] for p in probes if p.get(key)] for probes in sessions]
        per_session = [stats.median(values) for values in measured if values]
        if per_session:
            row[key] = stats.median(per_session)
    spreads = []
    for key in ("launch_us", "cpu_ms"):
        values = [p[key] for probes in sessions for p in probes if p.get(key)]
        if values:
            spreads.append(max(values) / min(values))
    if spreads:
        row["host_spread"] = max(spreads)
        # A graph replay is one launch per step: the host's cost hardly enters it, so only eager is flagged.
        if row["graphs"] == "off" and row["host_spread"] > HOST_VARIABLE_SPREAD:
            row["flags"].append("host-variable")


def _cell_row(cell: str, graphs: bool, records: list[dict]) -> dict[str, Any]:
    config = records[0]["config"]
    gpu = records[0]["gpu"]
    model, backend = config["model"], config["backend"]
    row: dict[str, Any] = {
        "model": model.rsplit("/", 1)[-1],
        "gpu": gpu,
        "ctx": config["ctx"],
        "backend": backend,
        "runtime": config.get("runtime", "hf"),  # sessions stored before runtimes existed ran under hf
        "weights": config["weights"],
        "graphs": "on" if graphs else "off",
        **{key: config.get(key) for key in CONFIG_COLUMNS},
        "run_ids": sorted({r["run_id"] for r in records}),
        "cell_hash": cell,
        # what the cell's key holds beyond the columns above: its switches and the measuring qbench
        "measure_settings": measure_settings_text(config),
        "qbench_version": config.get("qbench_version") or NOT_STORED,
        "measured_code": config.get("measured_code") or NOT_STORED,
        "comparison": comparison_key(config, gpu),
        # the rows its `vs base x` compares with: the same but for the switches (base_rows)
        "across_settings": comparison_key(config, gpu, (*COMPARED_ACROSS, "measure_settings")),
        "switched": switched(config),
        # the 16-bit reference of its runtime (bf16; llama.cpp's F16); stored before this existed: bf16
        "baseline": bool(records[0]["result"].get("baseline", backend == "bf16")),
        "status": "ok",
        "reason": "",
        "flags": [],
    }
    medians, walls, cvs, bandwidths, peaks, reasons, host_blocks, steals, cores = [], [], [], [], [], [], [], [], []
    ran: list[tuple[str, int]] = []
    prefills, joules, watts, held = [], [], [], []
    row.update(prefill_ms=None, j_per_token=None, mean_w=None, energy_source="not measured", gpu_memory_mib=None)
    row.update(kl_mean=None, kl_p99=None, kl_top1_pct=None)
    row["gpu_memory_source"] = "not measured"
    incorrect, throttled, kernel_missing = False, 0, 0
    checks: list[dict] = []  # the gate's logit checks of the cell's timed blocks
    total = len(records)
    for record in records:
        result = record["result"]
        device = record["config"]["device"]
        row.setdefault("label", stored_label(result.get("label", backend)))
        if "bytes" in result:
            row["bytes_per_step"] = result["bytes"]["total"]
            row["kernel"] = result.get("kernel", "")
        row.setdefault("runtime_notes", [])
        row["runtime_notes"] += [n for n in result.get("runtime_notes", []) if n not in row["runtime_notes"]]
        provenance = result.get("provenance", {})
        if provenance.get("copy_bandwidth_gbps"):
            bandwidths.append(provenance["copy_bandwidth_gbps"])
        if provenance and "software" not in row:
            keys = ("device", "driver", "cuda", "torch", "transformers")
            row["software"] = ", ".join(f"{k} {provenance[k]}" for k in keys if provenance.get(k))
        if result.get("host", {}).get("cpu_model") and "host_cpu" not in row:
            row["host_cpu"] = result["host"]["cpu_model"]
        if result.get("quality"):
            reasons.append(result["quality"])
        if result["status"] == "incorrect":
            incorrect = True
            reasons.append(result["reason"])
            continue
        blocks = [b for b in result.get("blocks", []) if b["graphs"] == graphs]
        bad = next((b for b in blocks if b["status"] != "ok"), None)
        if result["status"] != "ok" or not blocks or bad is not None:
            reason = (bad or {}).get("reason") or result.get("reason") or "no block for this setting"
            if bad is not None and bad["status"] == "incorrect":
                incorrect = True
            reasons.append(f"{(bad or result)['status']}: {reason}")
            continue
        checks += [b["logit_check"] for b in blocks if b.get("logit_check")]
        # Several rounds of the same setting in one session pool into that session's figure.
        steps = [ms for b in blocks for ms in _session_steps(b, device)]
        medians.append(stats.median(steps))
        ran.append((record["run_id"], record["config"].get("session_index", 0)))
        walls.append(stats.median([ms for b in blocks for ms in b["wall_ms"]]))
        cvs.append(stats.median([stats.coefficient_of_variation(_session_steps(b, device)) for b in blocks]))
        host_blocks.append([b["host"][when] for b in blocks if "host" in b for when in ("before", "after")])
        steals += [b["host"]["steal_pct"] for b in blocks if b.get("host", {}).get("steal_pct") is not None]
        if result.get("host", {}).get("pinned_core") is not None:
            cores.append(result["host"]["pinned_core"])
        if result.get("peak_memory_mib"):
            peaks.append(result["peak_memory_mib"])
        _session_evidence(row, result, blocks, prefills, joules, watts, held)
        if result.get("perplexity"):
            row["perplexity"] = result["perplexity"]["value"]
        after = result.get("nvml_after", {})
        if isinstance(after.get("throttle_reasons"), int) and after["throttle_reasons"] & THROTTLE_MASK:
            throttled += 1
        if result.get("kernel_seen") is False:
            kernel_missing += 1
    row["sessions"] = f"{len(medians)}/{total}"
    row["session_medians_ms"] = medians
    row["session_keys"] = ran  # (run, session index) of each median: which sessions ran side by side
    row["worker_starts"] = sorted({r["result"].get("worker_start", "spawn") for r in records})
    if bandwidths:
        row["measured_bandwidth_gbps"] = stats.median(bandwidths)
    if steals:
        row["steal_pct_max"] = max(steals)
    if cores:
        row["pinned_cores"] = sorted(set(cores))
    _host_summary(row, host_blocks)
    bytes_per_step = row.get("bytes_per_step")
    peak, row["bandwidth_source"] = _stored_peak(records, gpu)
    row["peak_bandwidth_gbps"] = peak
    if bytes_per_step:
        row["floor_ms_peak"] = bytes_per_step / (peak * 1e9) * 1e3 if peak else None
        measured = row.get("measured_bandwidth_gbps")
        row["floor_ms_measured"] = bytes_per_step / (measured * 1e9) * 1e3 if measured else None
    if incorrect:
        row["status"] = "incorrect"
        row["reason"] = "; ".join(sorted(set(reasons)))[:300]
        return row
    if not medians:
        row["status"] = "failed"
        row["reason"] = "; ".join(sorted(set(reasons)))[:300]
        return row
    if reasons:
        if len(medians) < total:
            row["status"] = f"ok ({len(medians)}/{total} sessions)"
        row["reason"] = "; ".join(sorted(set(reasons)))[:300]
    ms = stats.median(medians)
    row["ms_per_step"] = ms
    row["ms_interval"] = stats.session_interval(medians) if len(medians) > 1 else stats.NO_INTERVAL
    pooled = [
        s
        for r in records
        for b in r["result"].get("blocks", [])
        if b["graphs"] == graphs and b.get("status") == "ok"
        for s in _session_steps(b, r["config"]["device"])
    ]
    row["ms_p25"], row["ms_p75"] = stats.quantiles(pooled)
    row["wall_ms"] = stats.median(walls)
    row["tok_per_s"] = 1e3 / ms
    for key in ("floor_ms_peak", "floor_ms_measured"):
        if row.get(key):
            row[key.replace("floor_ms", "pct_of_floor")] = 100 * row[key] / ms
    if peaks:
        row["peak_memory_mib"] = max(peaks)
    if prefills:
        row["prefill_ms"] = stats.median(prefills)
    if joules:
        row["j_per_token"] = stats.median(joules)
        row["mean_w"] = stats.median(watts) if watts else None
    if held:  # the largest, with torch's reserve and live tensors in the session that held it
        row["gpu_memory_mib"], reserve, allocated = max(held, key=lambda session: session[0])
        for key, value in (("reserved_memory_mib", reserve), ("allocated_memory_mib", allocated)):
            if value is not None:
                row[key] = value
    if row.get("floor_ms_peak") and ms < row["floor_ms_peak"]:
        row["flags"].append("impossible")
    if stats.median(cvs) > NOISY_CV:
        row["flags"].append("noisy")
    if throttled:
        row["flags"].append(f"throttled {throttled}/{len(medians)}")
    if kernel_missing:  # the profiled step never ran the kernel the backend claims
        row["flags"].append("kernel-not-seen")
    _gate_margin(row, checks)
    return row


def _session_evidence(row: dict, result: dict, blocks: list[dict], prefills, joules, watts, held) -> None:
    """One session's prefill, energy and memory into the cell's lists (and their sources into the row)."""
    # only prefills timed after a warm one: a first call may compile or autotune for the prompt's shape
    timed = [b["prefill_ms"] for b in blocks if b.get("prefill_ms") is not None and b.get("prefill_warm")]
    if timed:
        prefills.append(stats.median(timed))
    # a block stored with energy_coarse (a window of one or two counter refreshes, before such
    # windows gave no figure) has an error as large as its figure: not counted
    energy = [b for b in blocks if b.get("j_per_token") is not None and not b.get("energy_coarse")]
    coarse = "not measured: the timed steps spanned fewer than 10 refreshes of the counter"
    meter = result.get("energy_meter", {})
    if energy:
        joules.append(stats.median([b["j_per_token"] for b in energy]))
        measured_w = [b["mean_w"] for b in energy if b.get("mean_w") is not None]
        if measured_w:
            watts.append(stats.median(measured_w))
        row["energy_source"] = f"{meter.get('source', '?')}; {meter.get('resolution', '')}".strip("; ")
        if any(b.get("energy_window_steps") for b in energy):  # qbench.session.decode.energy_window gave the figure
            row["energy_source"] += "; over an energy window of the block's step after its timed steps"
    elif not joules:  # why not, in the session's words (no counter, or windows too short for it)
        said = (coarse if b.get("energy_coarse") else b.get("energy") for b in blocks)
        why = meter.get("why_not") or next((text for text in said if text), "")
        row["energy_source"] = why or row["energy_source"]
    kl = result.get("kl")
    if kl:  # the same weights, text and reference in every session: the cell keeps the worst
        for key, worst in (("kl_mean", max), ("kl_p99", max), ("top1_agreement", min)):
            value = 100 * kl[key] if key == "top1_agreement" else kl[key]
            name = "kl_top1_pct" if key == "top1_agreement" else key
            row[name] = value if row.get(name) is None else worst(row[name], value)
    if result.get("gpu_memory_mib") is not None:
        torch_held = (result.get("reserved_memory_mib"), result.get("allocated_memory_mib"))  # where recorded
        held.append((result["gpu_memory_mib"], *torch_held))
    if result.get("gpu_memory_source"):
        row["gpu_memory_source"] = result["gpu_memory_source"]


def _gate_margin(row: dict, checks: list[dict]) -> None:
    """How close the cell's passing gate came to its limits: the worst logit error and the lowest
    top-1 agreement over its sessions, in %, and the `gate-edge` flag near either limit. Logit
    checks that did not decide (a backend that rounds its activations, on synthetic weights:
    qbench.session.gate) have no margin: the cell is flagged `layers-only` instead."""
    if any(c.get("decisive") is False for c in checks):
        row["flags"].append("layers-only")
    checks = [
        c
        for c in checks
        if c.get("decisive", True) and c.get("worst_relative_error") is not None and c.get("top1_agreement") is not None
    ]
    if not checks:
        return
    worst = max(c["worst_relative_error"] for c in checks)
    lowest = min(checks, key=lambda c: c["top1_agreement"])
    row["gate_worst_error_pct"] = 100 * worst
    row["gate_top1_pct"] = 100 * lowest["top1_agreement"]
    threshold = lowest.get("top1_threshold")
    if threshold is not None:
        row["gate_top1_threshold_pct"] = 100 * threshold
    if worst >= EDGE_ERROR or (threshold is not None and lowest["top1_agreement"] < threshold + float(EDGE_TOP1)):
        row["flags"].append("gate-edge")


def _quality_gate(row: dict, base: dict | None) -> None:
    """Real weights: perplexity against bf16 on the same text. Failing it removes the timings."""
    if not (base and base.get("perplexity") and row.get("perplexity")) or row is base:
        return
    row["perplexity_ratio"] = row["perplexity"] / base["perplexity"]
    if row["perplexity_ratio"] > PERPLEXITY_BOUND:
        row["status"] = "incorrect"
        row["reason"] = f"perplexity {row['perplexity']:.1f} > {PERPLEXITY_BOUND} x bf16's {base['perplexity']:.1f}"
        for key in (
            "ms_per_step",
            "ms_interval",
            "ms_p25",
            "ms_p75",
            "wall_ms",
            "tok_per_s",
            "pct_of_floor_peak",
            "pct_of_floor_measured",
        ):
            row.pop(key, None)


def _across(row: dict) -> tuple:
    return row["across_settings"], row["backend"], row["runtime"], row["group_size"], row["graphs"]


def _effective(row: dict) -> dict[str, str]:
    """Every switch a row ran under: a switch its store did not keep ran at its default."""
    return {**DEFAULT_MEASURE_SETTINGS, **(row["switched"] or {})}


def _value_order(name: str, value: str | None) -> tuple[int, str]:
    """Where a switch's value stands in qbench's order of its values (the default first); a value
    qbench no longer knows after every known one."""
    allowed = MEASURE_VARIABLES.get(name, ())
    return (allowed.index(value), "") if value in allowed else (len(allowed), value or "")


def _side_by_side(base: dict, row: dict) -> tuple[list[float], list[float], bool]:
    """Both rows' session medians and whether they pair: where every session of each has its twin of
    the same run and index in the other (`compare --vary` runs a backend's sides one after the other,
    so session i of each ran side by side), in that order; else as stored, unpaired."""
    twins = dict(zip(row["session_keys"], row["session_medians_ms"], strict=True))
    own = dict(zip(base["session_keys"], base["session_medians_ms"], strict=True))
    if len(own) == len(base["session_keys"]) and len(twins) == len(row["session_keys"]) and own.keys() == twins.keys():
        keys = sorted(own)
        return [own[k] for k in keys], [twins[k] for k in keys], True
    return base["session_medians_ms"], row["session_medians_ms"], False


def base_rows(rows: list[dict]) -> dict[tuple, dict]:
    """For each set of rows that differ only in their measuring switches (stored ones), the row the
    others are compared with (`vs base x`): the one whose differing switches take the earliest values
    in qbench's order of each (the default first: QBENCH_LEAN_FOLD off before on, QBENCH_LEAN_GEMV
    auto, cublas, triton). A --vary A/B of a default and another value has the default as its base;
    one of two other values (cublas, triton), or one run with another switch set in the environment,
    still has one. Rows of the same switches (two cards of one GPU spec in one store; a store from
    before a switch existed, read as its default) tie: the one with the most sessions, then the
    first cell hash, is the base. A runtime that reads no switch (hf) has none: its rows differ in
    nothing it runs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        # stored before qbench kept the switches: not known to differ
        if row["switched"] is not None and get_runtime(row["runtime"]).reads_switches:
            groups[_across(row)].append(row)
    bases = {}
    for key, members in groups.items():
        chosen = [_effective(row) for row in members]
        differing = sorted({name for one in chosen for name in one if len({c.get(name) for c in chosen}) > 1})
        if len(members) > 1 and differing:
            ranks = [tuple(_value_order(name, one.get(name)) for name in differing) for one in chosen]
            first = min(
                range(len(members)),
                key=lambda i: (ranks[i], -len(members[i]["session_medians_ms"]), members[i]["cell_hash"]),
            )
            bases[key] = members[first]
    return bases


def _add_ratios(rows: list[dict]) -> None:
    """Ratios against bf16 under the same runtime within one comparison group; a runtime's against
    hf for the same backend; eager over graphs within one cell; a row under other measuring switches
    against the same row under its base switches (`settings_speedup`, base_rows: what --vary A/B-tests)."""
    by_key = {(r["comparison"], r["runtime"], r["graphs"]): r for r in rows if r["baseline"]}
    under_hf = {
        (r["comparison"], r["backend"], r["group_size"], r["graphs"]): r for r in rows if r["runtime"] == DEFAULT
    }
    by_cell = {(r["cell_hash"], r["graphs"]): r for r in rows}
    # the same backend, runtime and configuration under its base switches (--vary's A/B)
    bases = base_rows(rows)
    # A runtime that fixes its graphs setting per process (llama.cpp) has its eager and graph
    # sessions in two cells that differ only in `graphs`: their rows pair as one A/B, unpaired.
    split = {(r["comparison"], r["backend"], r["runtime"], r["group_size"], r["graphs"]): r for r in rows}
    for row in rows:
        hf = under_hf.get((row["comparison"], row["backend"], row["group_size"], row["graphs"]))
        if row["runtime"] != DEFAULT and hf and hf.get("ms_per_step") and row.get("ms_per_step"):
            row["runtime_speedup"] = hf["ms_per_step"] / row["ms_per_step"]
        base = by_key.get((row["comparison"], row["runtime"], row["graphs"]))
        # perplexity against the runtime's 16-bit baseline, else against bf16 under hf
        _quality_gate(row, base or by_key.get((row["comparison"], DEFAULT, row["graphs"])))
        if base and base.get("bytes_per_step") and row.get("bytes_per_step"):
            row["expected_reduction"] = base["bytes_per_step"] / row["bytes_per_step"]
        if base and base.get("ms_per_step") and row.get("ms_per_step"):
            row["realised_speedup"] = base["ms_per_step"] / row["ms_per_step"]
            row["speedup_interval"] = stats.ratio_interval(
                base["session_medians_ms"], row["session_medians_ms"], paired=False
            )
            if row.get("expected_reduction"):
                row["realisation_pct"] = 100 * row["realised_speedup"] / row["expected_reduction"]
        base = bases.get(_across(row)) if row["switched"] is not None else None
        timed = base is not None and base.get("ms_per_step") and row.get("ms_per_step")
        if timed and _effective(base) != _effective(row):  # a row of the base's own switches is no A/B
            row["settings_base"] = switches_text(base["switched"]) or "the defaults"
            row["settings_speedup"] = base["ms_per_step"] / row["ms_per_step"]
            row["settings_interval"] = stats.ratio_interval(*_side_by_side(base, row))
        if row["graphs"] == "on":
            eager = by_cell.get((row["cell_hash"], "off"))
            same_cell = eager is not None
            if eager is None:
                eager = split.get((row["comparison"], row["backend"], row["runtime"], row["group_size"], "off"))
            if eager and eager.get("ms_per_step") and row.get("ms_per_step"):
                row["graphs_speedup"] = eager["ms_per_step"] / row["ms_per_step"]
                paired = same_cell and len(eager["session_medians_ms"]) == len(row["session_medians_ms"])
                row["graphs_interval"] = stats.ratio_interval(
                    eager["session_medians_ms"], row["session_medians_ms"], paired=paired
                )
                if eager.get("launch_us"):
                    row["eager_launch_us"] = eager["launch_us"]




def _status(row: dict) -> str:
    text = row["status"]
    if row["flags"]:
        text += " [" + ",".join(row["flags"]) + "]"
    return text


# The terminal and LaTeX show these by default (--wide: every column); columns empty in every row
def replication_rows(rows: list[dict]) -> list[dict]:
    """The research protocol's view: one row per bf16 cell (model, ctx, configuration), eager and
    graph side by side."""
    cells: dict[str, dict] = {}
    for row in rows:
        if row["backend"] != "bf16":
            continue
        cell = cells.setdefault(
            row["cell_hash"],
            {
                "model": row["model"],
                "gpu": row["gpu"],
                "ctx": row["ctx"],
                "run_ids": row["run_ids"],
                "runtime": row.get("runtime", "hf"),
                # how a figure names its series: a runtime under other switches is a series of its own
                "runtime_label": with_switches(row.get("runtime", "hf"), row["switched"]),
                "backend": row["backend"],
            },
        )
        prefix = "graph" if row["graphs"] == "on" else "eager"
        cell[f"{prefix}_ms"] = row.get("ms_per_step")
        cell[f"{prefix}_interval"] = row.get("ms_interval")
        cell[f"{prefix}_pct_of_floor"] = row.get("pct_of_floor_peak")
        cell[f"{prefix}_launch_us"] = row.get("launch_us")
        cell[f"{prefix}_status"] = _status(row)
        cell["sessions"] = row["sessions"]
        cell["floor_ms_peak"] = row.get("floor_ms_peak")
        if row["graphs"] == "on":
            cell["graphs_speedup"] = row.get("graphs_speedup")
            cell["graphs_interval"] = row.get("graphs_interval")
    return sorted(cells.values(), key=lambda c: (c["model"], c["ctx"], c["run_ids"]))


def replication_cells(rows: list[dict], db: str) -> list[dict]:
    """replication_rows of the rows read from `db`; none (no bf16 row) is the user's error."""
    cells = replication_rows(rows)
    if not cells:
        raise UserError(f"the selected runs in {db} hold no bf16 rows", "replication views come from bf16 runs")
    return cells


def kernel_rows(sessions: list[dict], top: int = 8) -> list[dict[str, Any]]:
    """Per cell (model, GPU, backend, ctx and the rest of its configuration): the largest CUDA
    kernels of the one eager step each session profiles after its timed blocks (median GPU time over
    the sessions that list the kernel), and each kernel's share of that step's GPU time: all kernels
    where sessions stored the total, else the 12 largest kernels each session stored (older
    results), as the row says."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    switches: dict[tuple, dict[str, str] | None] = {}  # the cell's measuring switches off their defaults
    for record in sessions:
        kernels = record["result"].get("step_kernels")
        if isinstance(kernels, list) and kernels:
            config = record["config"]
            runtime = config.get("runtime", "hf")
            key = (config["model"], record["gpu"], config["backend"], runtime, config["ctx"], record["cell_hash"])
            cells[key].append(record["result"])  # one cell: sessions of different configurations never pool
            switches[key] = switched(config)
    rows = []
    for (model, gpu, backend, runtime, ctx, cell), results in sorted(
        cells.items(), key=lambda item: (item[0][:3], get_runtime(item[0][3]).order, item[0][3:])
    ):
        whole = all(r.get("step_gpu_us") is not None for r in results)
        totals = [r["step_gpu_us"] if whole else sum(k["gpu_us"] for k in r["step_kernels"]) for r in results]
        total = median(totals)
        found: dict[str, list[dict]] = defaultdict(list)
        for result in results:
            for kernel in result["step_kernels"]:
                found[kernel["name"]].append(kernel)
        ranked = sorted(
            ((median([k["gpu_us"] for k in seen]), name, seen) for name, seen in found.items()),
            key=lambda item: -item[0],
        )
        for gpu_us, name, seen in ranked[:top]:
            rows.append(
                {
                    "model": model,
                    "gpu": gpu,
                    "backend": backend,
                    "runtime": runtime,
                    "switched": switches[(model, gpu, backend, runtime, ctx, cell)],
                    "ctx": ctx,
                    "kernel": name,
                    "calls": round(median([k["count"] for k in seen])),  # a count: 28, not 28.0 (two sessions)
                    "gpu_us": round(gpu_us, 1),
                    "share_of_step": round(gpu_us / total, 4) if total else None,
                    "step_gpu_ms": round(total / 1e3, 3),
                    "step_basis": "all kernels" if whole else "12 largest kernels stored",
                    "sessions": f"{len(seen)}/{len(results)}",
                    "cell_hash": cell,
                }
            )
    return rows


# ---- where a session's time goes --------------------------------------------------------------

PHASES = (
    ("start", "start_s"),  # the worker process starting, until its first line runs
    ("imports", "imports_s"),  # torch, transformers, qbench's session module
    ("provenance", "provenance_s"),  # device, NVML, copy bandwidth
    ("prepare", "prepare_s"),  # the backend's kernel: loaded, or built on a first run
    ("load", "load_s"),  # model built through the backend (weights made, quantised or read from the cache)
    ("gate", "gate_s"),  # byte check, layer check, reference logits, perplexity
    ("timed", "timed_s"),  # the timed blocks: prefill, warm-up, capture, timed steps, host probes
    ("profile", "profile_s"),  # the profiled step, NVML after
    ("rest", "rest_s"),  # what the parent saw beyond the phases above (result, exit)
)

TERMINAL_PHASES = ("imports", "load", "gate", "timed")


def session_rows(sessions: list[dict]) -> list[dict[str, Any]]:
    """One row per session that recorded its phases: seconds per phase, the whole session as the
    parent saw it, and `beyond_timed_s` = total - timed (the cost a session adds to its measurement)."""
    rows = []
    for record in sessions:
        phases = record["result"].get("phases")
        if not phases or "total_s" not in phases:
            continue
        config = record["config"]
        row = {
            "model": config["model"].rsplit("/", 1)[-1],
            "backend": config["backend"],
            "runtime": config.get("runtime", "hf"),
            "switched": switched(config),
            "ctx": config["ctx"],
            "session": config.get("session_index", 0) + 1,
            "cell_hash": record["cell_hash"],
            "run_id": record["run_id"],
            "status": record["result"]["status"],
            **{key: phases.get(key) for _, key in PHASES},
            "total_s": phases["total_s"],
        }
        row["beyond_timed_s"] = round(phases["total_s"] - (phases.get("timed_s") or 0.0), 3)
        row["weights_cache"] = record["result"].get("weights_cache", "")
        rows.append(row)
    return rows

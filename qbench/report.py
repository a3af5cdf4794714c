"""From stored sessions to table rows, and from rows to text, Markdown, CSV or JSON.

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
A cell whose correctness gate failed in any session shows `incorrect` and no timing figures.
Flags: impossible, noisy, throttled n/N, kernel-not-seen, host-variable, gate-edge (see FLAG_TEXT).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from qbench.analysis import stats
from qbench.registry import BUILT_IN_ORDER
from qbench.render.escape import (
    for_csv,
    for_html,
    for_terminal,
    html_prose,
    latex_prose,
    markdown_prose,
    table_body,
)
from qbench.render.tables import TERMINAL_WIDTH, layout
from qbench.runtimes import DEFAULT, get_runtime
from qbench.session.gate_limits import EDGE_ERROR, EDGE_TOP1
from qbench.specs import load_gpu_spec

PERPLEXITY_BOUND = 1.75  # real weights: a 4-bit backend's perplexity may be at most this x bf16's
NOISY_CV = 0.10  # coefficient of variation of steps inside a session above which a cell is noisy
# A cell's host probes (launch cost, fixed workload; before and after every timed block of every
# session) whose largest is more than this times their smallest: the host changed under the cell.
HOST_VARIABLE_SPREAD = 1.25
# NVML clock-event reasons that mean the clocks were held down (power, thermal, hardware slowdown)
THROTTLE_MASK = 0x4 | 0x8 | 0x40 | 0x80 | 0x100


# Table formats of the human-readable outputs (tabulate escapes cells for LaTeX and HTML; names in
# every format go through qbench.render.escape).
TABLE_FORMATS = {"table": "simple", "md": "github", "latex": "latex_booktabs", "html": "html"}


def _prose(text: str, fmt: str) -> str:
    if fmt == "html":
        return "<p>" + html_prose(text) + "</p>"
    if fmt == "latex":
        return latex_prose(text) + "\n"  # a blank line ends a LaTeX paragraph
    return markdown_prose(text)


def _heading(text: str, fmt: str) -> str:
    if fmt == "md":
        return f"### {markdown_prose(text)}"
    if fmt == "html":
        return f"<h3>{for_html(text)}</h3>"
    if fmt == "latex":
        return f"\\subsection*{{{latex_prose(text)}}}"
    return text


@dataclass
class Section:
    heading: str
    headers: list[str]
    body: list[list]
    before: list[str] = field(default_factory=list)  # prose lines above the table
    after: list[str] = field(default_factory=list)  # and below it


def document(fmt: str, title: str, sections: list[Section], legend: str, wide: bool = False) -> str:
    """Title lines, then each section's heading, prose and table, then the legend, in one of
    TABLE_FORMATS; as CSV, only the sections' header and body rows. The terminal table fits
    TERMINAL_WIDTH (its widest cells wrapped) unless `wide`."""
    if fmt == "csv":
        buffer = io.StringIO()
        for section in sections:
            csv.writer(buffer).writerows([section.headers, *table_body(section.body, fmt)])
        return buffer.getvalue()
    parts = [out for line in title.splitlines() if line for out in _lines(line, fmt)] + ([""] if title else [])
    for section in sections:
        if section.heading:  # in the terminal, wrapped at the table's width like all prose
            parts += _wrap(section.heading) if fmt == "table" else [_heading(section.heading, fmt)]
        parts += [out for line in section.before for out in _lines(line, fmt)] + ([""] if section.before else [])
        body = table_body(section.body, fmt)
        parts.append(layout(body, section.headers, TABLE_FORMATS[fmt], fit=fmt == "table" and not wide))
        parts += [out for line in section.after for out in _lines(line, fmt)] + [""]
    if fmt in ("table", "md"):  # a legend people read: wrapped, not one long line
        parts += textwrap.wrap(legend, LEGEND_WIDTH, break_on_hyphens=False)
    else:
        parts.append(_prose(legend, fmt))
    if fmt == "html":
        return html_document(title.splitlines()[0] if title else "qbench", "\n".join(parts))
    return "\n".join(parts)


LEGEND_WIDTH = 100


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        for_terminal(text), TERMINAL_WIDTH, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
    )


def _lines(text: str, fmt: str) -> list[str]:
    """A line of prose as output lines: in the terminal wrapped at the table's width (long commands
    included), else one line of the format's markup."""
    return _wrap(text, "    ") if fmt == "table" else [_prose(text, fmt)]
HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}"
    "table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:0 0.2em}"
)


def html_document(title: str, body: str, style: str = HTML_STYLE) -> str:
    """A whole, self-contained HTML document (inline style, nothing fetched)."""
    plain_title = re.sub(r"`([^`]+)`", r"\1", title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{for_html(plain_title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


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
    return ", ".join(f"{k}={v}" for k, v in chosen.items()) if chosen is not None else NOT_STORED


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
}


def stored_label(label: str) -> str:
    """The label as qbench writes it now: stores from before one convention labelled bnb-nf4's
    block size `(b64)`; a block of N weights sharing a scale is a group, `(gN)`."""
    return re.sub(r" \(b(\d+)\)$", r" (g\1)", label)


def comparison_key(config: dict, gpu: str) -> str:
    """What rows must share to be compared (ratios, one table section): all but COMPARED_ACROSS."""
    key = {k: v for k, v in config.items() if k not in COMPARED_ACROSS}
    key["gpu"] = gpu
    return json.dumps(key, sort_keys=True)


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
        # the 16-bit reference of its runtime (bf16; llama.cpp's F16); stored before this existed: bf16
        "baseline": bool(records[0]["result"].get("baseline", backend == "bf16")),
        "status": "ok",
        "reason": "",
        "flags": [],
    }
    medians, walls, cvs, bandwidths, peaks, reasons, host_blocks, steals, cores = [], [], [], [], [], [], [], [], []
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
    if held:
        row["gpu_memory_mib"] = max(held)
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
        held.append(result["gpu_memory_mib"])
    if result.get("gpu_memory_source"):
        row["gpu_memory_source"] = result["gpu_memory_source"]


def _gate_margin(row: dict, checks: list[dict]) -> None:
    """How close the cell's passing gate came to its limits: the worst logit error and the lowest
    top-1 agreement over its sessions, in %, and the `gate-edge` flag near either limit."""
    checks = [c for c in checks if c.get("worst_relative_error") is not None and c.get("top1_agreement") is not None]
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


def _add_ratios(rows: list[dict]) -> None:
    """Ratios against bf16 under the same runtime within one comparison group; a runtime's against
    hf for the same backend; eager over graphs within one cell."""
    by_key = {(r["comparison"], r["runtime"], r["graphs"]): r for r in rows if r["baseline"]}
    under_hf = {
        (r["comparison"], r["backend"], r["group_size"], r["graphs"]): r for r in rows if r["runtime"] == DEFAULT
    }
    by_cell = {(r["cell_hash"], r["graphs"]): r for r in rows}
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


# ---- rendering --------------------------------------------------------------------------------

COLUMNS = [
    ("backend", "label", None),
    ("runtime", "runtime", None),
    ("graphs", "graphs", None),
    ("ms/step", "ms_per_step", "{:.2f}"),
    ("95% CI", "ms_interval", "interval"),
    ("p25-p75", ("ms_p25", "ms_p75"), "{:.2f}-{:.2f}"),
    ("tok/s", "tok_per_s", "{:.1f}"),
    ("floor ms", "floor_ms_peak", "{:.2f}"),
    ("% floor", "pct_of_floor_peak", "{:.0f}%"),
    ("floor ms (meas.)", "floor_ms_measured", "{:.2f}"),
    ("% floor (meas.)", "pct_of_floor_measured", "{:.0f}%"),
    ("GB/step", "bytes_per_step", "gb"),
    ("expected x", "expected_reduction", "{:.2f}"),
    ("realised x", "realised_speedup", "{:.2f}"),
    ("realisation", "realisation_pct", "{:.0f}%"),
    ("graphs x", "graphs_speedup", "{:.2f}"),
    ("vs hf x", "runtime_speedup", "{:.2f}"),
    ("launch us", "launch_us", "{:.1f}"),
    ("TTFT ms", "prefill_ms", "{:.1f}"),
    ("J/tok", "j_per_token", "{:.3f}"),
    ("W", "mean_w", "{:.0f}"),
    ("GPU MiB", "gpu_memory_mib", "{:.0f}"),
    ("peak MiB", "peak_memory_mib", "{:.0f}"),
    ("ppl", "perplexity", "{:.2f}"),
    ("KL mean", "kl_mean", "{:.4f}"),
    ("KL p99", "kl_p99", "{:.4f}"),
    ("top-1 %", "kl_top1_pct", "{:.1f}"),
    ("sessions", "sessions", None),
    ("status", "status", None),
]


def _cell(row: dict, key, fmt) -> str:
    if isinstance(key, tuple):
        values = [row.get(k) for k in key]
        return "" if any(v is None for v in values) else fmt.format(*values)
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if fmt == "interval":
        return "" if value.method == "n/a" else f"{value.low:.2f}-{value.high:.2f}"
    if fmt == "gb":
        return f"{value / 1e9:.3f}"
    if fmt:
        return fmt.format(value)
    return str(value)


def _status(row: dict) -> str:
    text = row["status"]
    if row["flags"]:
        text += " [" + ",".join(row["flags"]) + "]"
    return text


# The terminal and LaTeX show these by default (--wide: every column); columns empty in every row
# are left out in every human-readable format. Where the terminal table is still wider than
# TERMINAL_WIDTH, columns go in DROP_ORDER until it fits.
COMPACT = (
    *("backend", "runtime", "graphs", "ms/step", "95% CI", "% floor", "% floor (meas.)"),
    *("expected x", "realised x", "graphs x", "vs hf x", "TTFT ms", "J/tok", "GPU MiB", "ppl", "KL mean"),
    *("sessions", "status"),
)
DROP_ORDER = (  # `expected x` and `sessions` stay: the realised-vs-expected promise and what backs it
    *("vs hf x", "TTFT ms", "J/tok", "GPU MiB", "KL mean", "ppl"),
    *("95% CI", "graphs x"),  # runtime stays too: hf and lean rows would read as one
)


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    headers = [name for name, _, _ in COLUMNS]
    body = []
    for row in rows:
        cells = [_cell(row, key, fmt) for _, key, fmt in COLUMNS]
        cells[-1] = _status(row)
        body.append(cells)
    return headers, body


def keep_columns(headers: list[str], body: list[list[str]], names: list[str]) -> tuple[list[str], list[list[str]]]:
    index = [headers.index(name) for name in names]
    return names, [[cells[i] for i in index] for cells in body]


def choose_columns(headers: list[str], body: list[list[str]], fmt: str, wide: bool) -> list[str]:
    """The columns a human-readable table shows: never one that is empty in every row; in the
    terminal and LaTeX, unless `wide`, the compact set, and in the terminal only as many as fit."""
    filled = [h for i, h in enumerate(headers) if any(cells[i] for cells in body)]
    if wide or fmt not in ("table", "latex"):
        return filled
    chosen = [h for h in filled if h in COMPACT]
    if "% floor" in chosen and "% floor (meas.)" in chosen:  # one floor column: the datasheet's
        chosen.remove("% floor (meas.)")
    if fmt == "table":
        droppable = [name for name in DROP_ORDER if name in chosen]
        while droppable and _width(headers, body, chosen) > TERMINAL_WIDTH:
            chosen.remove(droppable.pop(0))
    return chosen


def _width(headers: list[str], body: list[list[str]], names: list[str]) -> int:
    return max(map(len, layout(keep_columns(headers, body, names)[1], names, "simple").splitlines()))


INTERNAL_KEYS = ("comparison", "session_medians_ms")  # in the rows for grouping and intervals; not exported


def plain(row: dict) -> dict:
    """A JSON-safe copy of a row (intervals as dicts)."""
    out = {}
    for key, value in row.items():
        if key == "comparison":
            continue
        if isinstance(value, stats.Interval):
            value = None if value.method == "n/a" else {"low": value.low, "high": value.high, "method": value.method}
        out[key] = value
    return out


INTERVALS = {"ms_interval": "ms", "speedup_interval": "realised_x", "graphs_interval": "graphs_x"}


def csv_row(row: dict) -> dict:
    """One flat, machine-friendly CSV row: an interval as numeric `<what>_low` and `<what>_high`
    columns and its method; sessions as counts; lists joined."""
    flat = {k: v for k, v in plain(row).items() if k not in INTERNAL_KEYS}
    for key, stem in INTERVALS.items():
        interval = flat.pop(key, None)
        flat[f"{stem}_low"] = interval["low"] if interval else None
        flat[f"{stem}_high"] = interval["high"] if interval else None
        flat[f"{stem}_interval_method"] = interval["method"] if interval else None
    ok, _, total = str(flat.pop("sessions", "")).partition("/")
    flat["sessions_ok"], flat["sessions_total"] = (int(ok), int(total)) if total else (None, None)
    for key in ("flags", "run_ids", "pinned_cores", "worker_starts"):
        flat[key] = ",".join(map(str, flat.get(key) or []))
    flat["runtime_notes"] = " | ".join(flat.get("runtime_notes") or [])  # notes hold commas
    return flat


def _section_heading(row: dict) -> str:
    from qbench.model.weights import describe

    rounds = f" x {row['rounds']} rounds" if (row.get("rounds") or 1) > 1 else ""
    heading = (
        f"{row['model']} on {row['gpu']}, ctx {row['ctx']}: {describe(row['weights'])}; "
        f"{row.get('warmup')} warm-up + {row.get('steps')} timed steps{rounds}, seed {row.get('seed')}"
    )
    if row.get("measured_bandwidth_gbps"):
        heading += f"; measured copy bandwidth {row['measured_bandwidth_gbps']:.0f} GB/s"
    return heading


def _measured_by(row: dict) -> str:
    """The section's line on what measured it: every row of a section shares it (comparison_key)."""
    if row.get("qbench_version", NOT_STORED) == NOT_STORED:
        return "qbench version and measuring settings: " + NOT_STORED.replace("kept it", "kept them")
    code = f" (measured code {row['measured_code']})" if row.get("measured_code") != NOT_STORED else ""
    return f"measured by qbench {row['qbench_version']}{code} under {row.get('measure_settings', NOT_STORED)}"


def _section_notes(rows: list[dict]) -> list[str]:
    """Each row's failure reason and each runtime note, said once: a reason both graphs settings
    share names both, and a note every backend of a runtime shares (llama.cpp's KV cache, its graphs)
    names the runtime instead of repeating itself per backend."""
    reasons: dict[tuple[str, str, str], list[str]] = defaultdict(list)  # (label, runtime, reason) -> graphs
    for row in rows:
        if row["reason"]:
            reasons[(row["label"], row["runtime"], row["reason"])].append(row["graphs"])
    notes = [
        f"- {label} ({runtime}) graphs={', '.join(modes)}: {why}"
        for (label, runtime, why), modes in reasons.items()
    ]
    labels: dict[str, set[str]] = defaultdict(set)  # runtime -> its backends in this section
    sharing: dict[tuple[str, str], set[str]] = defaultdict(set)  # (runtime, note) -> backends that carry it
    for row in rows:
        labels[row["runtime"]].add(row["label"])
        for note in row.get("runtime_notes", []):
            sharing[(row["runtime"], note)].add(row["label"])
    said = []
    for (runtime, note), carriers in sharing.items():
        if len(carriers) > 1 and carriers == labels[runtime]:
            said.append(f"- {runtime}, every backend: {note}")
        else:
            said += [f"- {label} ({runtime}): {note}" for label in carriers]
    return notes + sorted(said)


def render(rows: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    if fmt == "json":
        return json.dumps([plain(r) for r in rows], indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        flats = [csv_row(row) for row in rows]
        keys = sorted({k for flat in flats for k in flat})
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        for flat in flats:
            writer.writerow({k: for_csv(flat.get(k)) for k in keys})
        return buffer.getvalue()
    headers, body = table_rows(rows)
    headers, body = keep_columns(headers, body, choose_columns(headers, body, fmt, wide))
    groups = defaultdict(list)
    for row, cells in zip(rows, body, strict=True):
        groups[row["comparison"]].append((row, cells))
    sections = []
    for members in groups.values():
        first = members[0][0]
        runs = sorted({run for row, _ in members for run in row["run_ids"]})
        before = [f"runs: {', '.join(runs)}"]
        before += [first["software"]] if first.get("software") else []
        before.append(_measured_by(first))
        if first.get("host_cpu"):
            cores = sorted({c for row, _ in members for c in row.get("pinned_cores", [])})
            pinned = f", decode loop pinned to core(s) {', '.join(map(str, cores))}" if cores else ", not pinned"
            before.append(f"host: {first['host_cpu']}{pinned} (--cpu {first.get('cpu') or 'off'})")
        notes = _section_notes([row for row, _ in members])
        sections.append(Section(_section_heading(first), headers, [c for _, c in members], before, notes))
    flags = sorted({flag.split()[0] for row in rows for flag in row["flags"]})
    legend = (
        "ms/step: median over sessions of per-session median step time (CUDA events on GPU, wall clock on CPU); "
        "95% CI over sessions (bca-bootstrap at >= 10 sessions, else t-interval on log ms); "
        "floor ms = bytes/step / datasheet peak bandwidth; % floor = floor ms / ms/step; "
        "floor ms (meas.) and % floor (meas.) use the measured copy bandwidth; "
        "expected x = baseline bytes / backend bytes, where the baseline is the runtime's 16-bit backend "
        "(bf16 under hf and lean, llamacpp-f16 under llamacpp); "
        "realised x = baseline ms / backend ms (same runtime, graphs setting and configuration); "
        "realisation = realised / expected, in %; graphs x = eager ms / graph ms; "
        "vs hf x = the same backend's ms under hf / under this runtime (same graphs setting); "
        "launch us = host time of one empty CUDA kernel launch (CPU: one op dispatch), measured around "
        "each timed block, median over sessions; TTFT ms = the prefill to ctx (time to first token); "
        "J/tok and W = energy of the timed steps per token and its mean power (energy_source in exports says "
        "which counter; blank = not measured); GPU MiB = GPU memory held by the step's processes after the "
        "timed steps, CUDA context included (NVML; gpu_memory_source), the one memory figure compared across "
        "runtimes; peak MiB = torch's allocator peak, where there is one; with real weights, ppl = perplexity "
        "on the built-in text, KL mean / p99 = KL divergence (nats) per position against the 16-bit reference "
        "(bf16 under hf) on the same tokens, top-1 % = positions whose most likely token agrees with it."
    )
    if flags:
        legend += " Flags: " + "; ".join(f"{flag} = {FLAG_TEXT[flag]}" for flag in flags if flag in FLAG_TEXT) + "."
    return document(fmt, title, sections, legend, wide)


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


def render_replication(cells: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    if fmt == "json":
        return json.dumps([plain(c) for c in cells], indent=2)

    def num(value, pattern):
        return "" if value is None else pattern.format(value)

    def interval(value):
        return "" if value is None or value.method == "n/a" else value.text(4)

    headers = [
        "model",
        "ctx",
        "floor ms",
        "eager ms",
        "eager % floor",
        "graph ms",
        "graph % floor",
        "graphs x",
        "graphs x 95% CI",
        "eager launch us",
        "sessions",
        "status (eager / graph)",
    ]
    body = [
        [
            c["model"],
            c["ctx"],
            num(c.get("floor_ms_peak"), "{:.2f}"),
            num(c.get("eager_ms"), "{:.2f}"),
            num(c.get("eager_pct_of_floor"), "{:.0f}%"),
            num(c.get("graph_ms"), "{:.2f}"),
            num(c.get("graph_pct_of_floor"), "{:.0f}%"),
            num(c.get("graphs_speedup"), "{:.3f}"),
            interval(c.get("graphs_interval")),
            num(c.get("eager_launch_us"), "{:.1f}"),
            c.get("sessions", ""),
            f"{c.get('eager_status', '')} / {c.get('graph_status', '')}",
        ]
        for c in cells
    ]
    legend = (
        "bf16 + SDPA, batch 1; % floor = (weights + KV bytes) / datasheet peak bandwidth / ms per step; "
        "graphs x = eager / graph ms per session (paired), interval over sessions; "
        "eager launch us = host time of one empty CUDA kernel launch around the eager blocks (blank: not measured)."
    )
    return document(fmt, title, [Section("", headers, body)], legend, wide)


def kernel_rows(sessions: list[dict], top: int = 8) -> list[dict[str, Any]]:
    """Per cell (model, GPU, backend, ctx and the rest of its configuration): the largest CUDA
    kernels of the one eager step each session profiles after its timed blocks (median GPU time over
    the sessions that list the kernel), and each kernel's share of that step's GPU time: all kernels
    where sessions stored the total, else the 12 largest kernels each session stored (older
    results), as the row says."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for record in sessions:
        kernels = record["result"].get("step_kernels")
        if isinstance(kernels, list) and kernels:
            config = record["config"]
            runtime = config.get("runtime", "hf")
            key = (config["model"], record["gpu"], config["backend"], runtime, config["ctx"], record["cell_hash"])
            cells[key].append(record["result"])  # one cell: sessions of different configurations never pool
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


def short_kernel_name(name: str, width: int = 80) -> str:
    """Drop `void ` and the `at::native::` namespaces that hide what a PyTorch kernel does."""
    name = name.removeprefix("void ").replace("at::native::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def render_kernels(rows: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    headers = [
        "model",
        "gpu",
        "backend",
        "runtime",
        "ctx",
        "kernel",
        "calls",
        "GPU us",
        "% of step",
        "step GPU ms",
        "of",
        "sessions",
    ]
    body = [
        [
            r["model"],
            r["gpu"],
            r["backend"],
            r["runtime"],
            r["ctx"],
            r["kernel"] if fmt == "csv" else short_kernel_name(r["kernel"]),
            r["calls"],
            r["gpu_us"],
            "" if r["share_of_step"] is None else f"{100 * r['share_of_step']:.0f}%",
            r["step_gpu_ms"],
            r["step_basis"],
            r["sessions"],
        ]
        for r in rows
    ]
    legend = (
        "One eager decode step per session, profiled (torch.profiler, CUDA activity) after the timed blocks; "
        "GPU us = median over the sessions that list the kernel; % of step = GPU us / the step's GPU time."
    )
    before = []
    if fmt == "table" and not wide:  # to fit the terminal: what every row shares is said once, above
        shared = [h for h in ("model", "gpu", "ctx") if len({str(cells[headers.index(h)]) for cells in body}) == 1]
        if body and shared:
            before.append(", ".join(f"{h} {body[0][headers.index(h)]}" for h in shared))
        headers, body = keep_columns(headers, body, [h for h in headers if h not in shared and h != "of"])
    return document(fmt, title, [Section("", headers, body, before)], legend, wide)


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


def render_sessions(rows: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)

    def seconds(value):
        return "" if value is None else f"{value:.1f}"

    # the terminal shows the phases that take the time (--wide: all of them), to fit its width
    phases = PHASES if wide or fmt != "table" else [(n, k) for n, k in PHASES if n in TERMINAL_PHASES]
    headers = ["model", "backend", "runtime", "ctx", "session", *(name for name, _ in phases)]
    headers += ["total", "beyond timed", "cache"]
    body = [
        [r["model"], r["backend"], r["runtime"], r["ctx"], r["session"]]
        + [seconds(r[key]) for _, key in phases]
        + [seconds(r["total_s"]), seconds(r["beyond_timed_s"]), r["weights_cache"]]
        for r in rows
    ]
    by_cell = defaultdict(list)  # one configuration: hf and lean, or two contexts, never pool
    for row in rows:
        by_cell[(row["model"], row["backend"], row["runtime"], row["ctx"], row["cell_hash"])].append(row)
    summary_headers = [
        "model",
        "backend",
        "runtime",
        "ctx",
        "sessions",
        "median total s",
        "median beyond timed s",
        "max beyond timed s",
        "same, after each cell's first session",
    ]
    summary = []
    for (model, backend, runtime, ctx, _), members in by_cell.items():
        beyond = [r["beyond_timed_s"] for r in members]
        later = [r["beyond_timed_s"] for r in members if r["session"] > 1]
        summary.append(
            [
                model,
                backend,
                runtime,
                ctx,
                len(members),
                seconds(median([r["total_s"] for r in members])),
                seconds(median(beyond)),
                seconds(max(beyond)),
                f"median {median(later):.1f}, max {max(later):.1f}" if later else "",
            ]
        )
    legend = (
        "Seconds per phase of each session: start = the worker process until its first line; imports = torch, "
        "transformers and qbench's session module; provenance = device, NVML, copy bandwidth; prepare = the "
        "backend's kernel (built on a first run); load = the model through the backend; gate = byte and layer "
        "checks, reference logits, perplexity; timed = the timed blocks (prefill, warm-up, graph capture, timed "
        "steps, host probes); profile = the profiled step; rest = what the parent saw beyond these; beyond timed = "
        "total - timed. cache = whether the session's synthetic weights came from the weights cache."
    )
    sections = [Section("per cell", summary_headers, summary), Section("per session", headers, body)]
    return document(fmt, title, sections, legend, wide)

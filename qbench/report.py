"""The export views as Documents (qbench.render.document): the compare view (one row per cell and
graphs setting, sections per comparison group), replication, kernels and sessions. The rows come from
qbench.analysis.aggregate (re-exported here for the callers that import them from this module); the
text of every format comes from qbench.render.formats.FORMATS.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Any

from qbench.analysis import stats
from qbench.analysis.aggregate import (  # noqa: F401 (re-exported: the rows' home before the split)
    CONFIG_COLUMNS,
    FLAG_TEXT,
    HOST_VARIABLE_SPREAD,
    NOISY_CV,
    NOT_STORED,
    PERPLEXITY_BOUND,
    PHASES,
    SPEC_AT_EXPORT,
    THROTTLE_MASK,
    _gate_margin,
    _status,
    aggregate,
    comparison_key,
    kernel_rows,
    measure_settings_text,
    replication_rows,
    session_rows,
    stored_label,
    switches_text,
    with_switches,
)
from qbench.render.document import Document, Gap, Heading, Legend, Prose, Renderer, Table
from qbench.render.formats import FORMATS
from qbench.render.formats.html import HTML_STYLE, html_document  # noqa: F401 (re-exported)
from qbench.render.tables import TERMINAL_WIDTH, layout


def document(title: str, sections: list[Section], legend: str, data: Any = None) -> Document:
    """Title lines, then each section's heading, prose and table, then the legend; `data` is what
    JSON carries (default: the tables)."""
    blocks: list[Any] = [Prose(line) for line in title.splitlines() if line] + ([Gap()] if title else [])
    for section in sections:
        blocks += [Heading(section.heading)] if section.heading else []
        blocks += [Prose(line) for line in section.before] + ([Gap()] if section.before else [])
        blocks.append(Table.of(section.headers, section.body))
        blocks += [Prose(line) for line in section.after] + [Gap()]
    blocks.append(Legend(legend))
    first = title.splitlines()[0] if title else "qbench"
    return Document(first, blocks, data=data)


class Section:
    def __init__(self, heading: str, headers: list[str], body: list[list], before=(), after=()) -> None:
        self.heading, self.headers, self.body = heading, headers, body
        self.before, self.after = list(before), list(after)  # prose lines above and below the table


# ---- the compare view --------------------------------------------------------------------------

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
    ("vs base x", "settings_speedup", "{:.2f}"),
    ("launch us", "launch_us", "{:.1f}"),
    ("TTFT ms", "prefill_ms", "{:.1f}"),
    ("J/tok", "j_per_token", "{:.3f}"),
    ("W", "mean_w", "{:.0f}"),
    ("GPU MiB", "gpu_memory_mib", "{:.0f}"),
    ("peak MiB", "peak_memory_mib", "{:.0f}"),
    ("reserved MiB", "reserved_memory_mib", "{:.0f}"),
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


COMPACT = (
    *("backend", "runtime", "graphs", "ms/step", "95% CI", "% floor", "% floor (meas.)"),
    *("expected x", "realised x", "graphs x", "vs hf x", "vs base x", "TTFT ms", "J/tok", "GPU MiB", "ppl"),
    "KL mean",
    *("sessions", "status"),
)
DROP_ORDER = (  # `expected x` and `sessions` stay: the realised-vs-expected promise and what backs it
    *("vs hf x", "TTFT ms", "J/tok", "GPU MiB", "KL mean", "ppl"),
    *("95% CI", "graphs x"),  # runtime stays too: hf and lean rows would read as one; vs base x, where
    # filled, is what the run asked for (--vary): it stays
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


def choose_columns(headers: list[str], body: list[list[str]], style: Renderer, wide: bool) -> list[str]:
    """The columns a human-readable table shows: never one that is empty in every row; in the
    terminal and LaTeX, unless `wide`, the compact set, and in the terminal only as many as fit."""
    filled = [h for i, h in enumerate(headers) if any(cells[i] for cells in body)]
    if wide or not style.compact:
        return filled
    chosen = [h for h in filled if h in COMPACT]
    if "% floor" in chosen and "% floor (meas.)" in chosen:  # one floor column: the datasheet's
        chosen.remove("% floor (meas.)")
    if style.fit:
        droppable = [name for name in DROP_ORDER if name in chosen]
        while droppable and _width(headers, body, chosen) > TERMINAL_WIDTH:
            chosen.remove(droppable.pop(0))
    return chosen


def _width(headers: list[str], body: list[list[str]], names: list[str]) -> int:
    return max(map(len, layout(keep_columns(headers, body, names)[1], names, "simple").splitlines()))


# grouping and ratios; not in CSV (JSON keeps the medians)
INTERNAL_KEYS = ("comparison", "across_settings", "switched", "session_medians_ms", "session_keys")


def plain(row: dict) -> dict:
    """A JSON-safe copy of a row (intervals as dicts)."""
    out = {}
    for key, value in row.items():
        if key in ("comparison", "across_settings", "session_keys"):  # grouping keys; the config's fields again
            continue
        if isinstance(value, stats.Interval):
            value = None if value.method == "n/a" else {"low": value.low, "high": value.high, "method": value.method}
        out[key] = value
    return out


INTERVALS = {
    "ms_interval": "ms", "speedup_interval": "realised_x", "graphs_interval": "graphs_x",
    "settings_interval": "vs_base_x",
}


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
    if row.get("switched"):  # the section's switches that are not the defaults (a --vary side, or the environment's)
        heading += "; under " + switches_text(row["switched"])
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
    """The compare view in format `fmt` (a FORMATS name)."""
    return FORMATS[fmt].render(compare_document(rows, FORMATS[fmt], title, wide), wide)


def compare_document(rows: list[dict], style: Renderer, title: str = "", wide: bool = False) -> Document:
    """One section per comparison group: what measured it above its table (its own columns: those
    filled in its rows), its notes below; JSON carries the rows whole, CSV one flat row each
    (intervals as numeric columns)."""
    flats = [csv_row(row) for row in rows]
    keys = sorted({k for flat in flats for k in flat})
    records = [{k: flat.get(k) for k in keys} for flat in flats]
    headers, body = table_rows(rows)
    groups = defaultdict(list)
    for row, cells in zip(rows, body, strict=True):
        groups[row["comparison"]].append((row, cells))
    sections = []
    for members in groups.values():
        # each section's own columns: one filled only in another (vs base x beside its base) takes no room here
        shown = choose_columns(headers, [cells for _, cells in members], style, wide)
        members = [(row, keep_columns(headers, [cells], shown)[1][0]) for row, cells in members]
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
        sections.append(Section(_section_heading(first), shown, [c for _, c in members], before, notes))
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
        "vs base x = the base row's ms / this row's, among rows that differ only in their measuring switches "
        "(same backend, runtime, graphs setting, configuration and measured code; --vary A/B-tests them): the "
        "base is the one whose differing switches take the earliest values in qbench's order, the default "
        "first (settings_base in exports names its switches; each section heading names its own); its interval "
        "pairs session i of each where the two ran side by side in one run (--vary), else is unpaired; "
        "launch us = host time of one empty CUDA kernel launch (CPU: one op dispatch), measured around "
        "each timed block, median over sessions; TTFT ms = the prefill to ctx (time to first token); "
        "J/tok and W = energy of the timed steps per token and its mean power (energy_source in exports says "
        "which counter; blank = not measured); GPU MiB = GPU memory held by the step's processes after the "
        "timed steps, CUDA context included (NVML; gpu_memory_source), the one memory figure compared across "
        "runtimes (the largest over the cell's sessions); peak MiB = torch's allocator peak, where there is one; "
        "reserved MiB = torch's allocator reserve (cached blocks included) when GPU MiB was read, in that "
        "session: GPU MiB less it is what torch's allocator does not hold; with real weights, ppl = perplexity "
        "on the built-in text, KL mean / p99 = KL divergence (nats) per position against the 16-bit reference "
        "(bf16 under hf) on the same tokens, top-1 % = positions whose most likely token agrees with it."
    )
    if flags:
        legend += " Flags: " + "; ".join(f"{flag} = {FLAG_TEXT[flag]}" for flag in flags if flag in FLAG_TEXT) + "."
    output = document(title, sections, legend, data=[plain(r) for r in rows])
    output.records = records
    return output


def render_replication(cells: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    return FORMATS[fmt].render(replication_document(cells, title), wide)


def replication_document(cells: list[dict], title: str = "") -> Document:

    def num(value, pattern):
        return "" if value is None else pattern.format(value)

    def interval(value):
        return "" if value is None or value.method == "n/a" else value.text(4)

    headers = [
        "model",
        "runtime",
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
            c.get("runtime_label", c.get("runtime", "")),  # with switches off their defaults: --vary's sides
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
    return document(title, [Section("", headers, body)], legend, data=[plain(c) for c in cells])


def short_kernel_name(name: str, width: int = 80) -> str:
    """Drop `void ` and the `at::native::` namespaces that hide what a PyTorch kernel does."""
    name = name.removeprefix("void ").replace("at::native::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def render_kernels(rows: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    return FORMATS[fmt].render(kernels_document(rows, FORMATS[fmt], title, wide), wide)


def kernels_document(rows: list[dict], style: Renderer, title: str = "", wide: bool = False) -> Document:
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
            with_switches(r["runtime"], r.get("switched")),
            r["ctx"],
            r["kernel"] if style.full_values else short_kernel_name(r["kernel"]),
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
    if style.fit and not wide:  # to fit the terminal: what every row shares is said once, above
        shared = [h for h in ("model", "gpu", "ctx") if len({str(cells[headers.index(h)]) for cells in body}) == 1]
        if body and shared:
            before.append(", ".join(f"{h} {body[0][headers.index(h)]}" for h in shared))
        headers, body = keep_columns(headers, body, [h for h in headers if h not in shared and h != "of"])
    return document(title, [Section("", headers, body, before)], legend, data=rows)


TERMINAL_PHASES = ("imports", "load", "gate", "timed")
def render_sessions(rows: list[dict], fmt: str, title: str = "", wide: bool = False) -> str:
    return FORMATS[fmt].render(sessions_document(rows, FORMATS[fmt], title, wide), wide)


def sessions_document(rows: list[dict], style: Renderer, title: str = "", wide: bool = False) -> Document:

    def seconds(value):
        return "" if value is None else f"{value:.1f}"

    # the terminal shows the phases that take the time (--wide: all of them), to fit its width
    phases = PHASES if wide or not style.fit else [(n, k) for n, k in PHASES if n in TERMINAL_PHASES]
    headers = ["model", "backend", "runtime", "ctx", "session", *(name for name, _ in phases)]
    headers += ["total", "beyond timed", "cache"]
    body = [
        [r["model"], r["backend"], with_switches(r["runtime"], r.get("switched")), r["ctx"], r["session"]]
        + [seconds(r[key]) for _, key in phases]
        + [seconds(r["total_s"]), seconds(r["beyond_timed_s"]), r["weights_cache"]]
        for r in rows
    ]
    by_cell = defaultdict(list)  # one configuration: hf and lean, or two contexts, never pool
    for row in rows:
        runtime = with_switches(row["runtime"], row.get("switched"))
        by_cell[(row["model"], row["backend"], runtime, row["ctx"], row["cell_hash"])].append(row)
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
    return document(title, sections, legend, data=rows)

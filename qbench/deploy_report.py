"""The deployment report: which backend, in which runtime, for this model on this GPU, and why.

One self-contained HTML file (inline style and figure, nothing fetched) or a Markdown version with
the same content, for someone who will not read a 19-column table. It adds no measurement of its
own: every figure is a row of `qbench.report.aggregate` (what `qbench export` prints, store by store)
or a stated formula over such rows. What it adds is a choice, made by rules the report states:

  latency budget B (ms/token, or a control-loop rate R Hz: B = 1000 / R, one token per tick):
      a correct cell meets B when the upper end of its ms/step 95% interval (its median where it has
      one session) is within B; of those, the fastest. Cells whose intervals overlap the fastest's
      are tied with it (the measurement cannot order them): among those, the least memory wins,
      then the better quality (lower KL divergence, or gate error where no KL was measured).
  memory budget M (MiB): of the correct cells whose memory fits M, the fastest (ties as above).

Memory is one figure for every cell: the GPU memory the step's processes hold after the timed
steps, CUDA context included (NVML, qbench.session.energy). Where some eligible cell of a group lacks it
(an older store, a CPU run) the whole group compares weights + KV bytes per step instead.

Only cells that passed the correctness gate (and, with real weights, the perplexity bound) are
eligible; incorrect and failed cells are listed with their reason, never recommended.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qbench import __version__
from qbench.analysis.aggregate import with_switches
from qbench.errors import UserError
from qbench.render.document import Callout, Document, Figure, Heading, Prose
from qbench.render.document import Table as Block
from qbench.render.escape import for_html
from qbench.render.formats import FORMATS
from qbench.report import (
    PERPLEXITY_BOUND,
    aggregate,
    keep_columns,
    kernel_rows,
    short_kernel_name,
)
from qbench.report import table_rows as export_table_rows
from qbench.runtimes import get_runtime, runtime_names
from qbench.session.gate_limits import LOGIT_TOLERANCE
from qbench.store import Store, check_output, write_output

MEMORY_TIER = 0.05  # memory within 5% of the least counts as one tier (the default memory budgets)
STANDARD_RATES_HZ = (1000, 500, 200, 100, 50, 30, 20, 10, 5, 1)  # control-loop rates tried by default
TOP_CELLS = 3  # cells whose largest kernels the report lists
TOP_KERNELS = 5
MIB = 2**20
SUFFIXES = {".html": "html", ".htm": "html", ".md": "md"}  # the format an --out name implies

# What a cell's memory figure is, by how the session measured it (qbench.session.run).
MEMORY_BASIS = {
    "nvml": "GPU memory the step's processes held after the timed steps, CUDA context included (NVML)",
    "bytes": "weights + KV cache bytes one step reads (no GPU memory was recorded: a CPU run, or an older store)",
}


# ---- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    kind: str  # "ms", "hz" or "mib"
    value: float
    given: bool = True  # named on the command line (else derived from the data)

    @property
    def ms(self) -> float:
        return self.value if self.kind == "ms" else 1e3 / self.value

    def text(self) -> str:
        if self.kind == "mib":
            return f"{self.value:,.0f} MiB ({self.value / 1024:.1f} GiB) of memory"
        if self.kind == "hz":
            return f"a {self.value:g} Hz control loop ({self.ms:.3g} ms/token)"
        return f"{self.value:g} ms/token ({1e3 / self.value:.3g} Hz)"


@dataclass(frozen=True)
class ReportConfig:
    dbs: tuple[str, ...]
    out: Path
    run: str = "all"
    budgets: tuple[Budget, ...] = ()
    command: str = ""
    format: str | None = None  # a qbench.render.formats.FORMATS name; None: from the suffix of `out`

    def __post_init__(self) -> None:
        if self.fmt is None:
            got = f"{self.out.suffix!r}" if self.out.suffix else "no suffix"
            raise UserError(
                f"--out {self.out} has {got}: the report's format is taken from the suffix",
                "use .html (one self-contained page) or .md, or name the format with --format",
            )
        if not self.dbs:
            raise UserError("no --db given", "pass --db FILE (repeat it for several stores)")
        for budget in self.budgets:
            if not (budget.value > 0 and math.isfinite(budget.value)):
                raise UserError(f"--budget-{budget.kind} must be positive, got {budget.value:g}", "pass e.g. 10")

    @property
    def fmt(self) -> str | None:
        return self.format or SUFFIXES.get(self.out.suffix.lower())


def parse_budgets(kind: str, text: str) -> tuple[Budget, ...]:
    """A comma-separated budget option (`--budget-ms 10,20`) as budgets; one line where it is not numbers."""
    try:
        return tuple(Budget(kind, float(part)) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--budget-{kind} takes numbers separated by commas, got {text!r}", "e.g. 10,20") from None


# ---- what the stores hold ---------------------------------------------------------------------


@dataclass
class Source:
    """One store, aggregated on its own exactly as `qbench export --db PATH --run ...` aggregates it."""

    tag: str  # A, B, ...: how tables name the store
    path: str
    commands: list[tuple[str, str]]  # (run id, command)
    rows: list[dict]
    kernels: list[dict]
    sessions: int


@dataclass
class Cell:
    """One row (a cell and graphs setting) of one store, with the memory figure the report uses."""

    source: str
    row: dict
    memory_mib: float | None = None
    memory_basis: str = ""
    pareto: bool = False
    predicted: bool = False  # nothing stored is predicted (qbench predict never stores); drawn apart if so

    @property
    def name(self) -> str:
        return f"{self.row['label']} · {runtime_text(self.row)} · graphs {self.row['graphs']}"

    @property
    def ms(self) -> float | None:
        return self.row.get("ms_per_step")

    @property
    def ms_high(self) -> float | None:
        """The upper end of the 95% interval; the median itself where there is no interval (one session)."""
        interval = self.row.get("ms_interval")
        if interval is None or interval.method == "n/a":
            return self.ms
        return interval.high

    @property
    def eligible(self) -> bool:
        status = self.row["status"]
        return status.startswith("ok") and self.ms is not None and "impossible" not in self.row["flags"]

    @property
    def sixteen_bit(self) -> bool:
        return bool(self.row.get("baseline"))


def load_sources(dbs: tuple[str, ...], run: str) -> list[Source]:
    sources, known = [], []
    for index, path in enumerate(dbs):
        store = Store(path, readonly=True)
        try:
            known_here = store.run_ids()
            if not known_here:
                raise UserError(f"{path} holds no runs", "run `qbench compare` first, or pass another --db")
            known += known_here
            selected = store.select_runs(run)  # None: a run only another store holds
            if selected is None:
                continue
            sessions = store.sessions(run_ids=selected)
            commands = store.commands(selected)
        finally:
            store.close()
        tag = chr(ord("A") + index) if index < 26 else str(index + 1)
        sources.append(
            Source(tag, path, commands, aggregate(sessions), kernel_rows(sessions, TOP_KERNELS), len(sessions))
        )
    if not sources:
        raise UserError(f"no run {run!r} in {', '.join(dbs)}", f"runs: {', '.join(known[-5:])}, or 'all' / 'latest'")
    return sources


# ---- the choice -------------------------------------------------------------------------------

GroupKey = tuple[str, str, int]  # model, GPU, ctx: one question ("this model on this GPU")


def _memory(cell: Cell, basis: str) -> None:
    row = cell.row
    if basis == "bytes":
        cell.memory_mib = row["bytes_per_step"] / MIB if row.get("bytes_per_step") else None
        cell.memory_basis = "bytes"
    else:
        cell.memory_mib = row.get("gpu_memory_mib")
        cell.memory_basis = "nvml"


def group_cells(sources: list[Source]) -> dict[GroupKey, list[Cell]]:
    """Cells per (model, GPU, ctx). Memory is the NVML figure where every correct cell of the group
    has one, else weights + KV bytes per step for all of them (one basis per figure, never mixed)."""
    groups: dict[GroupKey, list[Cell]] = defaultdict(list)
    for source in sources:
        for row in source.rows:
            groups[(row["model"], row["gpu"], row["ctx"])].append(Cell(source.tag, row))
    for cells in groups.values():
        recorded = all(c.row.get("gpu_memory_mib") for c in cells if c.eligible)
        for cell in cells:
            _memory(cell, "peak" if recorded else "bytes")
        _mark_pareto([c for c in cells if c.eligible and c.memory_mib is not None])
    return dict(sorted(groups.items()))


def _mark_pareto(cells: list[Cell]) -> None:
    """Pareto-optimal: no other cell is at least as fast and as small, and better in one."""
    for cell in cells:
        cell.pareto = not any(
            other.ms <= cell.ms
            and other.memory_mib <= cell.memory_mib
            and (other.ms < cell.ms or other.memory_mib < cell.memory_mib)
            for other in cells
        )


@dataclass
class Recommendation:
    budget: Budget
    chosen: Cell | None
    candidates: list[Cell]  # the correct cells that meet the budget, fastest first
    rule: str
    alternatives: list[tuple[str, Cell]] = field(default_factory=list)  # (why named, cell)


def _speed_order(cells: list[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda c: (c.ms, c.memory_mib if c.memory_mib is not None else math.inf, c.name))


def tick_text(value: float) -> str:
    """An axis label people read: 1,000 not 1e+03; 0.5 not 5e-01."""
    if value >= 1 and value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def ms_low(cell: Cell) -> float:
    """The lower end of the 95% interval; the median itself where there is no interval (one session)."""
    interval = cell.row.get("ms_interval")
    if interval is None or interval.method == "n/a":
        return cell.ms
    return interval.low


def tied_with_fastest(fits: list[Cell]) -> list[Cell]:
    """The cells (fastest first) the measurement cannot tell from the fastest: their intervals overlap."""
    if not fits:
        return []
    fastest = fits[0]
    return [c for c in fits if ms_low(c) <= fastest.ms_high]


def _quality_badness(cell: Cell) -> float:
    """Lower is better: the mean KL divergence against the 16-bit reference where measured, else the
    gate's worst logit error; unknown quality ranks last among tied cells."""
    row = cell.row
    for key in ("kl_mean", "gate_worst_error_pct"):
        if row.get(key) is not None:
            return float(row[key])
    return math.inf


def _tie_break(cell: Cell) -> tuple:
    return (cell.memory_mib, _quality_badness(cell), cell.ms, cell.name)


def recommend(cells: list[Cell], budget: Budget) -> Recommendation:
    correct = [c for c in cells if c.eligible and c.memory_mib is not None]
    alternatives: list[tuple[str, Cell]] = []
    tie_rule = (
        "; cells whose 95% intervals overlap the fastest's are tied with it, and the least memory, then the "
        "better quality, breaks the tie"
    )
    if budget.kind == "mib":
        fits = _speed_order([c for c in correct if c.memory_mib <= budget.value])
        rule = "the fastest correct cell whose memory fits the budget" + tie_rule
    else:
        fits = _speed_order([c for c in correct if c.ms_high <= budget.ms])
        rule = "of the correct cells whose ms/step (upper end of the 95% interval) meets the budget, the fastest"
        rule += tie_rule
    tied = tied_with_fastest(fits)
    chosen = min(tied, key=_tie_break) if tied else None
    if chosen is not None and fits[0] is not chosen:
        alternatives.append(("the fastest, tied within its interval", fits[0]))
    runner_up = next((c for c in fits if c is not chosen and all(c is not a for _, a in alternatives)), None)
    if runner_up is not None:
        alternatives.append(("the runner-up", runner_up))
    if chosen is not None and not chosen.sixteen_bit:
        sixteen = next((c for c in fits if c.sixteen_bit), None)
        if sixteen is not None and all(sixteen is not c for _, c in alternatives):
            alternatives.append(("the fastest 16-bit cell, no quantisation", sixteen))
    return Recommendation(budget, chosen, fits, rule, alternatives)


def default_budgets(cells: list[Cell]) -> list[Budget]:
    """Budgets from the data when none is named: the standard control-loop rates from the first that
    some correct cell meets to the first that every correct cell meets, and one memory budget per
    memory tier (its largest cell, rounded up to a whole GiB)."""
    correct = [c for c in cells if c.eligible and c.memory_mib is not None]
    if not correct:
        return []
    budgets = []
    slowest = max(c.ms_high for c in correct)
    fastest = min(c.ms_high for c in correct)
    for rate in STANDARD_RATES_HZ:
        if 1e3 / rate < fastest:
            continue
        budgets.append(Budget("hz", rate, given=False))
        if 1e3 / rate >= slowest:
            break
    tiers: list[list[float]] = []
    for memory in sorted(c.memory_mib for c in correct):
        if tiers and memory <= tiers[-1][0] * (1 + MEMORY_TIER):
            tiers[-1].append(memory)
        else:
            tiers.append([memory])
    ceilings = sorted({math.ceil(max(tier) / 1024) * 1024 for tier in tiers})  # two small tiers may share one
    return budgets + [Budget("mib", ceiling, given=False) for ceiling in ceilings]


# ---- the report as data -----------------------------------------------------------------------


@dataclass
class Table:
    heading: str
    headers: list[str]
    body: list[list]
    note: str = ""


@dataclass
class Group:
    key: GroupKey
    cells: list[Cell]
    recommendations: list[Recommendation]
    tables: list[Table]


@dataclass
class Report:
    title: str
    sources: list[Source]
    groups: list[Group]
    command: str


def build(config: ReportConfig) -> Report:
    sources = load_sources(config.dbs, config.run)
    groups = []
    for key, cells in group_cells(sources).items():
        budgets = list(config.budgets) or default_budgets(cells)
        recommendations = [recommend(cells, budget) for budget in budgets]
        groups.append(Group(key, cells, recommendations, _tables(cells, sources)))
    for budget in config.budgets:
        if not any(r.chosen for g in groups for r in g.recommendations if r.budget == budget):
            raise UserError(_unmet(budget, groups), "raise the budget, or measure a faster or smaller backend")
    models = sorted({g.key[0] for g in groups})
    gpus = sorted({g.key[1] for g in groups})
    title = f"Which backend to deploy: {', '.join(models)} on {', '.join(gpus)}"
    return Report(title, sources, groups, config.command)


def _unmet(budget: Budget, groups: list[Group]) -> str:
    correct = [c for g in groups for c in g.cells if c.eligible and c.memory_mib is not None]
    if not correct:
        return f"no correct cell in the selected runs, so none meets {budget.text()}"
    if budget.kind == "mib":
        best = min(correct, key=lambda c: c.memory_mib)
        return f"no correct cell fits {budget.text()}: the smallest is {best.name} at {best.memory_mib:,.0f} MiB"
    best = min(correct, key=lambda c: c.ms_high)
    return (
        f"no correct cell meets {budget.text()}: the fastest is {best.name} at {best.ms:.2f} ms/step "
        f"(95% interval up to {best.ms_high:.2f})"
    )


# ---- words ------------------------------------------------------------------------------------


def interval_text(cell: Cell) -> str:
    interval = cell.row.get("ms_interval")
    sessions = cell.row["sessions"].split("/")[0]
    if interval is None or interval.method == "n/a":
        return f"{sessions} session, no interval"
    return f"95% CI {interval.low:.2f}-{interval.high:.2f}, {interval.method}, {sessions} sessions"


def memory_text(cell: Cell) -> str:
    if cell.memory_mib is None:
        return "memory not recorded"
    what = {"nvml": "held by the step's processes, NVML", "bytes": "weights + KV bytes/step"}
    return f"{cell.memory_mib:,.0f} MiB ({what[cell.memory_basis]})"


def quality_text(row: dict) -> str:
    """The quality verdict: measured only where real weights were (perplexity on the built-in text)."""
    if row["status"] == "incorrect":
        return f"incorrect: {row['reason']}"
    if row["weights"] == "synthetic":
        return (
            "not measured (synthetic weights: the gate checked the kernels compute their format, not accuracy)"
            + _gate_text(row)
        )
    kl = ""
    if row.get("kl_mean") is not None:
        kl = (
            f"; KL divergence against the 16-bit reference {row['kl_mean']:.4f} nats mean, {row['kl_p99']:.4f} "
            f"p99, top-1 agreement {row['kl_top1_pct']:.1f}%"
        )
    if row.get("perplexity_ratio") is not None:
        return (
            f"perplexity {row['perplexity']:.2f}, {row['perplexity_ratio']:.2f}x bf16's "
            f"(bound {PERPLEXITY_BOUND}x): passed{kl}"
        )
    if row.get("perplexity") is not None:
        return (
            f"perplexity {row['perplexity']:.2f} (the 16-bit reference){kl}"
            if row.get("baseline")
            else (f"perplexity {row['perplexity']:.2f} (no 16-bit row to compare with){kl}")
        )
    return "real weights: logits passed the gate; perplexity not scored"


def _gate_text(row: dict) -> str:
    """The gate's margin where a cell passed close to a limit (the `gate-edge` flag), or what its gate
    could not check (`layers-only`)."""
    if "layers-only" in row["flags"]:
        return (
            "; its logits decided nothing in the gate (it rounds its activations, and on synthetic weights "
            "rounding noise alone moves them past the limit), its layers did, each also on the model's own "
            "activations: check it on real weights before relying on it"
        )
    if "gate-edge" not in row["flags"] or row.get("gate_worst_error_pct") is None:
        return ""
    threshold = row.get("gate_top1_threshold_pct")
    top1 = f"top-1 agreement {row['gate_top1_pct']:.0f}%" + (f" (threshold {threshold:.0f}%)" if threshold else "")
    return (
        f"; it passed the gate close to a limit: worst logit error {row['gate_worst_error_pct']:.1f}% "
        f"(limit {100 * LOGIT_TOLERANCE:.0f}%), {top1}: check it on real weights before relying on it"
    )


def quality_measured(row: dict) -> bool:
    return row["weights"] != "synthetic" and row.get("perplexity") is not None


def cell_facts(cell: Cell) -> str:
    """One cell's figures in a sentence: every one a column of `qbench export`."""
    row = cell.row
    parts = [f"{cell.ms:.2f} ms/step ({interval_text(cell)})", memory_text(cell)]
    if row.get("pct_of_floor_peak") is not None:
        floor = f"{row['pct_of_floor_peak']:.0f}% of the memory floor at datasheet bandwidth"
        if row.get("pct_of_floor_measured") is not None:
            floor += f" ({row['pct_of_floor_measured']:.0f}% at measured)"
        parts.append(floor)
    if row.get("realisation_pct") is not None and not row.get("baseline"):
        parts.append(
            f"realised {row['realised_speedup']:.2f}x of an expected {row['expected_reduction']:.2f}x "
            f"traffic cut ({row['realisation_pct']:.0f}%)"
        )
    if row["flags"]:
        parts.append("flags: " + ", ".join(row["flags"]))
    return "; ".join(parts)


def compared_text(chosen: Cell, other: Cell) -> str:
    """Whether two cells' ms/step are told apart at 95% (their intervals do not overlap)."""
    a, b = chosen.row.get("ms_interval"), other.row.get("ms_interval")
    if a is None or b is None or "n/a" in (a.method, b.method):
        return "no interval on one of them"
    overlap = a.low <= b.high and b.low <= a.high
    return "intervals overlap: not told apart at 95%" if overlap else "intervals do not overlap"


def merge(recommendations: list[Recommendation]) -> list[list[Recommendation]]:
    """Consecutive budgets of one kind (latency, memory) that pick the same cell for the same reasons
    are told once, not once per budget."""
    merged: list[list[Recommendation]] = []
    for rec in recommendations:
        last = merged[-1][-1] if merged else None
        if (
            last is not None
            and (last.budget.kind == "mib") == (rec.budget.kind == "mib")
            and last.chosen is rec.chosen
            and [id(c) for _, c in last.alternatives] == [id(c) for _, c in rec.alternatives]
        ):
            merged[-1].append(rec)
        else:
            merged.append([rec])
    return merged


def _budgets_text(recs: list[Recommendation]) -> str:
    budgets = [rec.budget for rec in recs]
    if len(budgets) > 1 and all(b.kind == "hz" for b in budgets):  # one control loop, several rates
        rates = [f"{b.value:g}" for b in budgets]
        low, high = min(b.ms for b in budgets), max(b.ms for b in budgets)
        joined = f"a {', '.join(rates[:-1])} or {rates[-1]} Hz control loop ({low:.3g} to {high:.3g} ms/token)"
    else:
        texts = [b.text() for b in budgets]
        joined = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + f" or {texts[-1]}"
    if all(b.given for b in budgets):
        return joined
    return joined + (", a standard budget taken from the data" if len(budgets) == 1 else ", standard budgets")


# flags under which a cell's ms/step is not yet a figure to decide on (report.FLAG_TEXT says why)
UNDECIDED_FLAGS = ("noisy", "host-variable")


def provisional_text(cell: Cell) -> str:
    """The caveat a recommendation carries in its headline when its cell cannot decide it (no 95%
    interval behind the rule's "upper end", or a noisy or host-variable measurement), and what
    would: empty when the cell decides it."""
    why = []
    interval = cell.row.get("ms_interval")
    if interval is None or interval.method == "n/a":
        sessions = cell.row["sessions"].split("/")[0]
        why.append(f"{sessions} session{'' if sessions == '1' else 's'}, no interval")
    why += [flag for flag in UNDECIDED_FLAGS if flag in cell.row["flags"]]
    if not why:
        return ""
    return (
        f"PROVISIONAL ({', '.join(why)}): not decided at 95%; "
        "measure again with `qbench compare --sessions 3` (or more) to decide"
    )


def runtime_text(row: dict) -> str:
    """The runtime as deployed: with the measuring switches its cell ran under where they are not
    qbench's defaults (`lean (QBENCH_LEAN_FOLD=on)`), since the default runtime is not what was timed."""
    return with_switches(row["runtime"], row.get("switched"))


def recommendation_text(recs: list[Recommendation]) -> tuple[str, list[str]]:
    """The headline (what to deploy within these budgets) and the reasons (its figures, the rule,
    what it beat): one list of budgets that chose the same cell."""
    first = recs[0]
    if first.chosen is None:
        return f"Within {_budgets_text(recs)}: no correct cell meets it.", []
    chosen = first.chosen
    headline = (
        f"Within {_budgets_text(recs)}: deploy {chosen.row['label']} under {runtime_text(chosen.row)}, "
        f"CUDA graphs {chosen.row['graphs']} [store {chosen.source}]."
    )
    caveat = provisional_text(chosen)
    if caveat:
        headline = headline[:-1] + f", {caveat}."
    counts = sorted({len(rec.candidates) for rec in recs})
    count = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    reasons = [
        f"Measured: {cell_facts(chosen)}.",
        f"Quality: {quality_text(chosen.row)}.",
        f"Rule: {first.rule}; {count} correct cell(s) meet {'it' if len(recs) == 1 else 'these budgets'}.",
    ]
    for why, other in first.alternatives:
        reasons.append(
            f"It beat {why}, {other.name} [store {other.source}]: {other.ms:.2f} ms/step ({interval_text(other)}), "
            f"{memory_text(other)}; {compared_text(chosen, other)}."
        )
    return headline, reasons


def glance_rows(recommendations: list[Recommendation]) -> tuple[list[str], list[list]]:
    """One line per budget: the answer without the reasons."""
    headers = ["budget", "deploy", "runtime", "graphs", "ms/step", "memory", "quality", "store"]
    body = []
    for rec in recommendations:
        chosen = rec.chosen
        if chosen is None:
            body.append([rec.budget.text(), "nothing correct meets it", "", "", "", "", "", ""])
            continue
        quality = "measured" if quality_measured(chosen.row) else "not measured"
        deploy = chosen.row["label"] + (" (provisional)" if provisional_text(chosen) else "")
        body.append([rec.budget.text(), deploy, runtime_text(chosen.row), chosen.row["graphs"],
                     f"{chosen.ms:.2f}", memory_text(chosen), quality, chosen.source])  # fmt: skip
    return headers, body


def excluded_text(cells: list[Cell]) -> str:
    excluded = [c for c in cells if not c.eligible]
    if not excluded:
        return ""
    names = ", ".join(f"{c.name} [store {c.source}] ({c.row['status']})" for c in excluded)
    return f"Never eligible, whatever the budget: {names}; the last table says why."


# ---- tables -----------------------------------------------------------------------------------

FLOOR_COLUMNS = [
    "backend", "runtime", "graphs", "ms/step", "95% CI", "% floor", "% floor (meas.)", "GB/step",
    "expected x", "realised x", "realisation", "vs hf x", "peak MiB", "sessions", "status",
]  # fmt: skip


def _tables(cells: list[Cell], sources: list[Source]) -> list[Table]:
    return [
        _floor_table(cells),
        _graphs_table(cells),
        _kernel_table(cells, sources),
        _excluded_table(cells),
    ]


def _floor_table(cells: list[Cell]) -> Table:
    """% of floor and realisation per backend and runtime: `qbench export`'s own cells, unchanged."""
    headers, body = export_table_rows([c.row for c in cells])
    headers, body = keep_columns(headers, body, FLOOR_COLUMNS)
    body = [[cell.source, *cells_text] for cell, cells_text in zip(cells, body, strict=True)]
    note = (
        "% floor = (bytes/step / datasheet bandwidth) / ms/step; (meas.) uses the copy bandwidth measured in the "
        "sessions; expected x = 16-bit bytes / backend bytes; realised x = 16-bit ms / backend ms (same runtime "
        "and graphs setting); realisation = realised / expected; vs hf x = this backend's ms under hf / here."
    )
    return Table("% of the memory floor and realisation, per backend and runtime", ["store", *headers], body, note)


def _graphs_table(cells: list[Cell]) -> Table:
    """Graphs A/B per backend and runtime, beside the host's launch cost measured around the blocks."""
    by = {(c.source, c.row["comparison"], c.row["backend"], c.row["runtime"], c.row["group_size"], c.row["graphs"]): c
          for c in cells}  # fmt: skip
    body = []
    for cell in cells:
        row = cell.row
        if row["graphs"] != "on" or row.get("graphs_speedup") is None:
            continue
        eager = by.get((cell.source, row["comparison"], row["backend"], row["runtime"], row["group_size"], "off"))
        interval = row.get("graphs_interval")
        body.append(
            [
                cell.source,
                row["label"],
                runtime_text(row),
                _num(eager.ms if eager else None, "{:.2f}"),
                _num(cell.ms, "{:.2f}"),
                f"{row['graphs_speedup']:.2f}",
                "" if interval is None or interval.method == "n/a" else f"{interval.low:.2f}-{interval.high:.2f}",
                _num(row.get("eager_launch_us"), "{:.1f}"),
                _num(row.get("launch_us"), "{:.1f}"),
                _num(eager.row.get("host_spread") if eager else None, "{:.2f}x"),
                ", ".join(eager.row["flags"]) if eager else "",
            ]
        )
    headers = ["store", "backend", "runtime", "eager ms", "graph ms", "graphs x", "graphs x 95% CI"]
    headers += ["eager launch us", "graph launch us", "eager host spread", "eager flags"]
    note = (
        "graphs x = eager ms / graph ms, paired per session where both ran in the same sessions; launch us = host "
        "time of one empty CUDA kernel launch, measured before and after every timed block (median over sessions); "
        "host spread = the largest / smallest host probe across the eager blocks (host-variable above 1.25x)."
    )
    return Table("CUDA graphs A/B and the host's launch cost", headers, body, note)


def top_cells(cells: list[Cell]) -> list[Cell]:
    """The fastest Pareto-optimal cells: the ones a reader is choosing between."""
    return _speed_order([c for c in cells if c.pareto])[:TOP_CELLS]


def _kernel_table(cells: list[Cell], sources: list[Source]) -> Table:
    kernels = {source.tag: source.kernels for source in sources}
    body = []
    for cell in top_cells(cells):
        found = [k for k in kernels[cell.source] if k["cell_hash"] == cell.row["cell_hash"]]
        if not found:
            why = "no kernel profile stored (an engine in its own process, or not a CUDA run)"
            body.append([cell.source, cell.name, why, "", "", "", ""])
        for kernel in found:
            share = "" if kernel["share_of_step"] is None else f"{100 * kernel['share_of_step']:.0f}%"
            body.append(
                [cell.source, cell.name, short_kernel_name(kernel["kernel"], 70), kernel["calls"],
                 kernel["gpu_us"], share, kernel["step_gpu_ms"]]
            )  # fmt: skip
    headers = ["store", "cell", "kernel", "calls", "GPU us", "% of step", "step GPU ms"]
    note = (
        "One eager decode step per session, profiled after the timed blocks (the same kernels run in a graph "
        "replay); GPU us = median over the sessions; the top cells are the fastest Pareto-optimal ones."
    )
    return Table("The largest kernels of the top cells", headers, body, note)


def _excluded_table(cells: list[Cell]) -> Table:
    body = [[c.source, c.name, c.row["status"], c.row["reason"] or ", ".join(c.row["flags"])]
            for c in cells if not c.eligible]  # fmt: skip
    note = "Never recommended: a cell is eligible only when every session passed the correctness gate."
    return Table("Incorrect or failed: not eligible", ["store", "cell", "status", "why"], body, note)


def _num(value, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def figure_rows(cells: list[Cell]) -> tuple[list[str], list[list]]:
    """The figure's data as a table (the Markdown report's figure)."""
    headers = ["store", "cell", "ms/step", "95% CI", "memory MiB", "Pareto-optimal", "quality", "figure"]
    body = [
        [
            c.source,
            c.name,
            f"{c.ms:.2f}",
            interval_text(c),
            _num(c.memory_mib, "{:,.0f}"),
            "yes" if c.pareto else "",
            "measured" if quality_measured(c.row) else "not measured",
            "predicted" if c.predicted else "measured",
        ]
        for c in _speed_order([c for c in cells if c.eligible and c.memory_mib is not None])
    ]
    return headers, body


def provenance_rows(sources: list[Source]) -> tuple[list[str], list[list]]:
    headers = ["store", "file", "run", "command", "sessions", "machine"]
    body = []
    for source in sources:
        machines = sorted({r.get("software", "") for r in source.rows} - {""})
        cpus = sorted({r.get("host_cpu", "") for r in source.rows} - {""})
        machine = "; ".join(machines + [f"host CPU {c}" for c in cpus])
        for index, (run, command) in enumerate(source.commands):
            first = index == 0
            body.append([source.tag if first else "", source.path if first else "", run, command,
                         source.sessions if first else "", machine if first else ""])  # fmt: skip
    return headers, body


# ---- the figure (SVG by hand: nothing to install, nothing fetched) -----------------------------

RUNTIME_PALETTE = ("#1f77b4", "#d62728", "#2ca02c")  # the first runtimes in table order; the rest: OTHER_COLOUR


def runtime_colours() -> dict[str, str]:
    return dict(zip(runtime_names(), RUNTIME_PALETTE, strict=False))


OTHER_COLOUR = "#7f7f7f"
WIDTH, HEIGHT = 880, 470
PLOT = (70, 20, 640, 400)  # left, top, right, bottom of the plotting area


def _tick_step(high: float) -> float:
    """The smallest 1-2-5 step that puts at most 8 ticks between 0 and `high`."""
    decade = 10 ** math.floor(math.log10(high / 8)) if high > 0 else 1
    return next(m * decade for m in (1, 2, 5, 10) if high / (m * decade) <= 8)


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for decade in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10**decade for m in (1, 2, 5) if low <= m * 10**decade <= high]
    return ticks


def pareto_svg(cells: list[Cell], figure_id: str, title: str) -> str:
    """ms/step (log scale) against memory, one point per correct cell with its 95% interval: colour =
    runtime, circle = graphs on, triangle = eager, filled = real-weights quality measured, hollow = not
    measured, black ring and label = Pareto-optimal, dashed outline = predicted."""
    points = [c for c in cells if c.eligible and c.memory_mib is not None]
    left, top, right, bottom = PLOT
    lows = [c.row["ms_interval"].low if _has_interval(c) else c.ms for c in points]
    highs = [c.ms_high for c in points]
    # An interval from two noisy sessions can span decades (or reach 0): the axis keeps to within
    # 100x of the medians and the interval lines are clipped to it.
    medians = [c.ms for c in points]
    y_low = max(min(lows), min(medians) / 100) / 1.15
    y_high = min(max(highs), max(medians) * 100) * 1.15
    x_high = max(c.memory_mib for c in points) * 1.1

    def x(mib: float) -> float:
        return left + (right - left) * mib / x_high

    def y(ms: float) -> float:
        ms = min(max(ms, y_low), y_high)
        span = math.log(y_high) - math.log(y_low)
        return bottom - (bottom - top) * (math.log(ms) - math.log(y_low)) / span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{figure_id}" class="pareto" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" aria-labelledby="{figure_id}-title">',
        f'<title id="{figure_id}-title">{for_html(title)}</title>',
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>',
    ]
    for tick in _log_ticks(y_low, y_high):
        out.append(f'<line x1="{left}" x2="{right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>')
        label = tick_text(tick)
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11">{label}</text>')
    unit, per_unit = ("GiB", 1024) if x_high >= 2048 else ("MiB", 1)  # a tiny model's bytes are MiB
    step = _tick_step(x_high / per_unit)
    for index in range(int(x_high / per_unit / step) + 1):
        value = index * step
        at = x(value * per_unit)
        out.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{top}" y2="{bottom}" stroke="#eee"/>')
        label = tick_text(value)
        out.append(f'<text x="{at:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{label}</text>')
    basis = points[0].memory_basis if points else "nvml"
    x_label = f"weights + KV bytes per step ({unit})" if basis == "bytes" else f"GPU memory ({unit})"
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 36}" text-anchor="middle" font-size="12">{x_label}</text>')
    out.append(
        f'<text transform="translate(18 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle" font-size="12">'
        "ms per decode step (log scale), 95% interval</text>"
    )
    frontier = sorted((c for c in points if c.pareto), key=lambda c: c.memory_mib)
    if len(frontier) > 1:
        path = " ".join(f"{x(c.memory_mib):.1f},{y(c.ms):.1f}" for c in frontier)
        out.append(f'<polyline points="{path}" fill="none" stroke="#555" stroke-dasharray="4 3"/>')
    for cell in sorted(points, key=lambda c: c.pareto):  # Pareto points drawn last, on top
        out += _point(cell, x(cell.memory_mib), y, y(cell.ms))
    out += _labels([(c, x(c.memory_mib), y(c.ms)) for c in frontier])
    out += _legend(right + 16, top)
    out.append("</svg>")
    return "\n".join(out)


def _has_interval(cell: Cell) -> bool:
    interval = cell.row.get("ms_interval")
    return interval is not None and interval.method != "n/a"


def _point(cell: Cell, px: float, y, py: float) -> list[str]:
    colour = runtime_colours().get(cell.row["runtime"], OTHER_COLOUR)
    fill = colour if quality_measured(cell.row) else "#fff"
    dash = ' stroke-dasharray="2 2"' if cell.predicted else ""
    kind = "predicted" if cell.predicted else "measured"
    tip = for_html(f"{cell.name} [store {cell.source}], {kind}: {cell.ms:.2f} ms/step, {memory_text(cell)}")
    out = [f'<g class="point {kind}{" pareto-optimal" if cell.pareto else ""}"><title>{tip}</title>']
    if _has_interval(cell):
        interval = cell.row["ms_interval"]
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y(interval.low):.1f}" y2="{y(interval.high):.1f}" '
                   f'stroke="{colour}" stroke-width="1"/>')  # fmt: skip
    if cell.row["graphs"] == "on":
        out.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{fill}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
    else:
        corners = f"{px:.1f},{py - 6:.1f} {px - 5.5:.1f},{py + 4:.1f} {px + 5.5:.1f},{py + 4:.1f}"
        out.append(f'<polygon points="{corners}" fill="{fill}" stroke="{colour}" stroke-width="2"{dash}/>')
    if cell.pareto:
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="9" fill="none" stroke="#000" stroke-width="1.2"/>')
    out.append("</g>")
    return out


LABEL_GAP = 14  # px between two labels' baselines


def _labels(placed: list[tuple[Cell, float, float]]) -> list[str]:
    """Names beside the Pareto-optimal points. Cells of one memory tier sit almost on one x, so labels
    are stacked upwards from the fastest (lowest), each at least LABEL_GAP above the last, with a
    leader line where a label had to move off its point."""
    out, last_y = [], math.inf
    for cell, px, py in sorted(placed, key=lambda item: -item[2]):
        label_y = min(py, last_y - LABEL_GAP)
        last_y = label_y
        if py - label_y > 2:
            out.append(
                f'<line x1="{px + 9:.1f}" y1="{py:.1f}" x2="{px + 22:.1f}" y2="{label_y - 4:.1f}" stroke="#999"/>'
            )
        name = for_html(f"{cell.row['label']} {runtime_text(cell.row)} [{cell.source}]")
        out.append(f'<text x="{px + 24:.1f}" y="{label_y:.1f}" font-size="11" class="label">{name}</text>')
    return out


def _legend(left: float, top: float) -> list[str]:
    out, line = [], top + 10
    for runtime, colour in [*runtime_colours().items(), ("other", OTHER_COLOUR)]:
        out.append(f'<circle cx="{left + 6}" cy="{line}" r="5" fill="{colour}" stroke="{colour}"/>')
        out.append(f'<text x="{left + 18}" y="{line + 4}" font-size="11">runtime {runtime}</text>')
        line += 18
    entries = [
        ('<circle cx="{x}" cy="{y}" r="5" fill="#fff" stroke="#333" stroke-width="2"/>', "CUDA graphs on"),
        ('<polygon points="{x},{t} {l},{b} {r},{b}" fill="#fff" stroke="#333" stroke-width="2"/>', "eager"),
        ('<circle cx="{x}" cy="{y}" r="5" fill="#333" stroke="#333"/>', "quality measured (real weights)"),
        ('<circle cx="{x}" cy="{y}" r="5" fill="#fff" stroke="#333" stroke-width="2"/>', "quality not measured"),
        ('<circle cx="{x}" cy="{y}" r="8" fill="none" stroke="#000"/>', "Pareto-optimal"),
        ('<circle cx="{x}" cy="{y}" r="5" fill="#fff" stroke="#333" stroke-dasharray="2 2"/>', "predicted (none)"),
    ]
    for shape, text in entries:
        mark = shape.format(x=left + 6, y=line, t=line - 6, b=line + 4, l=left + 0.5, r=left + 11.5)
        out.append(mark)
        out.append(f'<text x="{left + 18}" y="{line + 4}" font-size="11">{text}</text>')
        line += 18
    return out


# ---- rendering --------------------------------------------------------------------------------

LEGEND = (
    "Every figure here is measured: a row of `qbench export` for the store named in brackets, aggregated "
    "store by store (nothing is pooled across stores). ms/step is the median over sessions of each session's "
    "median step (CUDA events on a GPU), with its 95% interval over sessions. Predicted figures "
    "(`qbench predict`) are never stored, so none appear."
)
MEMORY_NOTE = "Memory: {basis}. Budgets in Hz assume one token per control-loop tick (budget ms = 1000 / Hz)."
REPORT_STYLE = (  # beside qbench.render.formats.html.HTML_STYLE
    ".badge{display:inline-block;font-size:0.75em;padding:0.05em 0.5em;border-radius:0.8em;margin-left:0.5em;"
    "vertical-align:middle;font-weight:600}.measured{background:#e3f4e6;color:#17612c;border:1px solid #9fd1aa}"
    ".predicted{background:#fdeaea;color:#8a1c1c;border:1px dashed #d99}"
    ".rec{border-left:4px solid #17612c;background:#f6fbf7;padding:0.4em 1em;margin:0.8em 0}"
    ".rec.none{border-color:#8a1c1c;background:#fdf6f6}.rec h4{margin:0.2em 0}.rec ul{margin:0.3em 0}"
    "figure{margin:1em 0}figcaption{font-size:0.9em;color:#444;max-width:60em}.note{font-size:0.85em;color:#444}"
)
BADGE = "measured"  # every figure in the report is measured; `qbench predict`'s never appear


def _group_title(key: GroupKey) -> str:
    model, gpu, ctx = key
    return f"{model} on {gpu}, context {ctx}"


QUALITY_CAVEAT = (
    "No cell here ran real weights, so no quantised backend's quality was measured: check it on your "
    "checkpoint (`qbench compare --weights PATH`) before deploying a 4-bit backend."
)


def group_notes(group: Group) -> list[str]:
    """What a reader needs beside the recommendations: what the memory figure is, what the runtimes
    are, whether quality was measured at all, and why there is no latency budget where there is none."""
    cells = group.cells
    notes = [MEMORY_NOTE.format(basis=_memory_bases(cells))]
    if any(c.eligible for c in cells) and all(r.budget.kind == "mib" for r in group.recommendations):
        rates = f"{STANDARD_RATES_HZ[0]} to {STANDARD_RATES_HZ[-1]} Hz"
        notes.append(f"No latency budget: no correct cell's 95% interval ends within any standard rate ({rates}).")
    runtimes = sorted({c.row["runtime"] for c in cells})
    notes.append("Runtimes: " + "; ".join(get_runtime(r).label for r in runtimes) + ".")
    if not any(quality_measured(c.row) for c in cells):
        notes.append(QUALITY_CAVEAT)
    return notes


def _memory_bases(cells: list[Cell]) -> str:
    bases = sorted({c.memory_basis for c in cells if c.eligible and c.memory_mib is not None})
    return "; ".join(f"{base} = {MEMORY_BASIS[base]}" for base in bases) or "not recorded"


def document(report: Report) -> Document:
    """The report as a Document: HTML draws its Pareto figures (SVG, qbench.deploy_report.pareto_svg),
    the other formats show the figure's points as a table; every block carries the `measured` badge
    where the figures are measured."""
    blocks: list[Any] = [Heading(report.title, 1), Prose(LEGEND, badge=BADGE)]
    for number, group in enumerate(report.groups, 1):
        blocks += [Heading(_group_title(group.key), 2), Heading("Recommendations", 3, BADGE)]
        if group.recommendations:
            blocks.append(Block.of(*glance_rows(group.recommendations), kind="text"))
        else:
            blocks.append(Prose("No correct cell: nothing to recommend (the table of incorrect cells says why)."))
        for recs in merge(group.recommendations):
            headline, reasons = recommendation_text(recs)
            blocks.append(Callout(headline, reasons, ok=recs[0].chosen is not None))
        blocks += [Prose(excluded_text(group.cells))] if excluded_text(group.cells) else []
        blocks += [Prose(note, note=True) for note in group_notes(group)]
        drawings = []
        for graphs, mode in (("on", "graph replay (graphs on)"), ("off", "eager (graphs off)")):
            # one panel per graphs setting: an eager cell's host-bound time is another question
            panel = [c for c in group.cells if c.row["graphs"] == graphs]
            if not any(c.eligible and c.memory_mib is not None for c in panel):
                continue
            title = f"ms/step against memory, {_group_title(group.key)}: {mode}"
            caption = (
                f"Pareto figure, {mode}: one point per correct cell (backend, runtime, store), its 95% "
                "interval as a vertical line; the dashed line joins the Pareto-optimal cells (none both faster "
                "and smaller, over both panels). Incorrect cells have no ms/step and are listed below."
            )
            drawings.append((pareto_svg(panel, f"pareto-{number}-{graphs}", title), caption))
        headers, body = figure_rows(group.cells)
        fallback = [
            Heading("Pareto figure, as a table", 3, BADGE),
            Prose("The HTML report draws these points (ms/step against memory); Pareto-optimal = no other "
                  "correct cell is both faster and smaller."),
            Block.of(headers, body, kind="text"),
        ] if body else []  # fmt: skip
        blocks.append(Figure(drawings, fallback, BADGE))
        for table in group.tables:
            blocks.append(Heading(table.heading, 3, BADGE))
            blocks.append(Block.of(table.headers, table.body, kind="text") if table.body else Prose("None."))
            blocks += [Prose(table.note, note=True)] if table.note else []
    blocks += [Heading("Provenance", 2, BADGE), Block.of(*provenance_rows(report.sources), kind="text")]
    blocks.append(Prose(f"This report: `{report.command}` (qbench {__version__})."))
    return Document(report.title, blocks, spaced=True, style=REPORT_STYLE)


def write(config: ReportConfig) -> Path:
    """Build the report from the stores and write it whole to `config.out` (never onto a store:
    qbench.store.check_output); the stores are only read."""
    check_output(config.out, config.dbs)
    report = build(config)
    text = FORMATS[config.fmt].render(document(report), False)
    write_output(config.out, lambda path: path.write_text(text))
    return config.out

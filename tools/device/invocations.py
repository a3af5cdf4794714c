"""The same eager cell in separate invocations, before and after the trust issue's changes: a table of
each invocation with its host columns. Developer tooling for the GPU host, not part of qbench.

    invocations.py probe --label old-1 >> probes.jsonl     # a host probe in its own process (for runs
                                                            # by a qbench that does not probe the host)
    invocations.py table probes.jsonl before=old.sqlite after=new.sqlite [label=other.sqlite ...]
"""

from __future__ import annotations

import json
import statistics
import sys


def probe(label: str) -> None:
    from qbench.session import host

    record = {"label": label, **host.probe("cuda")}
    _, times = host.choose_core(host.affinity())
    record["core_fixed_ms_min"], record["core_fixed_ms_max"] = min(times.values()), max(times.values())
    print(json.dumps(record), flush=True)


def rows(db: str, version: str) -> list[dict]:
    from qbench.store import Store

    store = Store(db, readonly=True)
    found = []
    for number, session in enumerate(store.sessions(), 1):
        result = session["result"]
        (block,) = [b for b in result.get("blocks", []) if not b["graphs"]]
        host = block.get("host", {})
        row = {
            "version": version,
            "invocation": number,
            "run": session["run_id"],
            "ms": statistics.median(block["event_ms"]),
            "cv": statistics.stdev(block["event_ms"]) / statistics.mean(block["event_ms"]),
            "status": result["status"],
        }
        if host:
            row["launch_us"] = f"{host['before']['launch_us']:.1f} / {host['after']['launch_us']:.1f}"
            row["cpu_ms"] = f"{host['before']['cpu_ms']:.1f} / {host['after']['cpu_ms']:.1f}"
            row["core"] = result["host"].get("pinned_core")
            row["steal"] = host.get("steal_pct")
        found.append(row)
    store.close()
    return found


def table(probes_path: str, labelled: list[str]) -> None:
    """labelled: LABEL=DB pairs; the first is the qbench that does not probe the host (its rows get
    the probe run in its own process just before each invocation)."""
    probes = {}
    for line in open(probes_path):
        record = json.loads(line)
        probes[record["label"]] = record
    print(
        "| qbench | invocation | run | eager ms/step | in-block CV | launch us (before / after) "
        "| fixed workload ms (before / after) | pinned core | steal % | status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    pairs = [item.split("=", 1) for item in labelled]
    for position, (version, db) in enumerate(pairs):
        for row in rows(db, version):
            if position == 0:
                extra = probes.get(f"old-{row['invocation']}", {})
                launch = f"{extra.get('launch_us', '')} (probe just before, own process)"
                cpu = f"{extra.get('cpu_ms', '')} (same)"
                core, steal = "not pinned", ""
            else:
                launch, cpu, steal = row["launch_us"], row["cpu_ms"], row["steal"]
                core = "not pinned" if row["core"] is None else row["core"]
            print(
                f"| {version} | {row['invocation']} | {row['run']} | {row['ms']:.2f} | {row['cv']:.1%} | {launch} "
                f"| {cpu} | {core} | {steal} | {row['status']} |"
            )
    print()
    for version, db in pairs:
        medians = [row["ms"] for row in rows(db, version)]
        centre = statistics.median(medians)
        worst = max(abs(m / centre - 1) for m in medians)
        print(
            f"- {version}: medians {', '.join(f'{m:.2f}' for m in medians)} ms; max/min "
            f"{max(medians) / min(medians):.3f}; largest deviation from their median {worst:.1%}"
        )


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(sys.argv[3])
    else:
        table(sys.argv[2], sys.argv[3:])

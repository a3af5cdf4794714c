"""Write qbench-int4's per-shape block table (`gemv_int4.TABLE`) from int4_shapes.py sweeps.

    python tools/device/apply_table.py FILE.py SWEEP.json [SWEEP.json ...]
    python tools/device/apply_table.py --installed SWEEP.json [...]   # the gemv_int4.py Python imports

For each of Qwen2.5-7B's four fused shapes, the fastest qbench-int4 configuration in any of the
sweeps (QUICK and WIDE together, on Hopper each with and without the bf16x2 variant) becomes the
shape's entry; the rest of the file is left byte for byte. On the device, `--installed` rewrites the
installed qbench, so a sweep and the step it chooses for run in one call (the sessions' measured-code
digest then differs from the wheel's commit: the runbook says which commit holds the same table);
here, the same command on `qbench/runtimes/kernels/gemv_int4.py` with the returned sweeps writes
the same bytes, so a commit of it has that digest. Prints the table it wrote.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

# int4_shapes.py's shape names: (N, K) and the entry's comment in gemv_int4.TABLE
SHAPES = {
    "qkv fused": ((4608, 3584), "q/k/v fused"),
    "o": ((3584, 3584), "o (and q unfused)"),
    "gate+up fused": ((37888, 3584), "gate/up fused"),
    "down": ((3584, 18944), "down"),
}
TABLE = re.compile(r"^(TABLE: dict\[tuple\[int, int\], tuple\[int, \.\.\.\]\] = \{[^\n]*\n)(.*?)^\}\n", re.M | re.S)


def fastest(sweeps: list[dict]) -> dict[str, tuple[tuple, float]]:
    """Shape name -> (configuration, microseconds): the fastest over every sweep that measured it."""
    best: dict[str, tuple[tuple, float]] = {}
    for sweep in sweeps:
        for name, row in sweep.get("shapes", {}).items():
            if name not in SHAPES:
                continue
            for config, figures in row.get("qbench-int4", {}).get("configs", {}).items():
                us = figures.get("us")
                if us is not None and (name not in best or us < best[name][1]):
                    best[name] = (ast.literal_eval(config), us)
    return best


def table_body(best: dict[str, tuple[tuple, float]]) -> str:
    lines = []
    for name, ((n, k), comment) in SHAPES.items():
        config = best[name][0]
        lines.append(f"    ({n}, {k}): {config!r},  # {comment}\n")
    return "".join(lines)


def rewrite(path: Path, best: dict[str, tuple[tuple, float]]) -> None:
    text = path.read_text()
    match = TABLE.search(text)
    if match is None:
        sys.exit(f"{path}: no `TABLE: dict[tuple[int, int], tuple[int, ...]] = {{` block to rewrite")
    new = text[: match.start(2)] + table_body(best) + text[match.end(2) :]
    path.write_text(new)


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    if args[0] == "--installed":
        from qbench.runtimes.kernels import gemv_int4

        target = Path(gemv_int4.__file__)
    else:
        target = Path(args[0])
    sweeps = []
    for name in args[1:]:
        try:
            sweeps.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as error:
            sys.exit(f"{name}: not a sweep ({type(error).__name__}: {error})")
    best = fastest(sweeps)
    missing = [name for name in SHAPES if name not in best]
    if missing:
        sys.exit(f"no qbench-int4 figure for {', '.join(missing)} in {', '.join(args[1:])}: table left as it was")
    rewrite(target, best)
    print(f"{target}: TABLE from {', '.join(args[1:])}")
    for name, ((n, k), _) in SHAPES.items():
        config, us = best[name]
        print(f"  {name:14s} {n}x{k}: {config} {us:.1f} us")


if __name__ == "__main__":
    main()

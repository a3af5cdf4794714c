"""Instructions a weight of qbench-int4's GEMV as compiled for an H100 (sm_90), on any machine: no GPU.

    python tools/int4_sass.py [BLOCK_N WARPS]        # default 64 2

Triton compiles the kernel for sm_90 with GROUPS = 2 and 4 (one loop iteration unrolled over that
many groups), ptxas assembles it and nvdisasm lists the SASS; the difference between the two counts,
divided by the weights one thread handles in the extra groups, is the instructions a weight of the
inner loop (the code outside it cancels). Printed for the float32 path and the bf16x2 variant, with
the opcodes that make the difference. Static counts: what the loop issues per weight, not a timing.
Then, for each tile (gemv_int4's "Tiles"), how many 128-bit weight loads the SASS issues one after
another before arithmetic: the loads a thread has in flight.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton

from qbench.runtimes.kernels import gemv_int4


def sass(constants: dict, warps: int) -> str:
    """The kernel's SASS for sm_90 (nvdisasm's listing): Triton compiles, ptxas assembles."""
    compiled = gemv_int4.compile_for_sm90(constants, warps)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
        return subprocess.run([tool, "-c", cubin.name], capture_output=True, text=True, check=True).stdout


def constants(block_n: int, groups: int, bf16x2: bool, tile: int = 0, split_k: bool = True) -> dict:
    return {"GROUP": 128, "GROUPS": groups, "HAS_BIAS": False, "SPLIT_K": split_k, "BLOCK_N": block_n, "SN": 1,
            "BF16X2": bf16x2, "PDL": False, "TILE": tile}


def opcodes(block_n: int, groups: int, warps: int, bf16x2: bool) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in sass(constants(block_n, groups, bf16x2), warps).splitlines():
        found = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if found:
            counts[found.group(1)] += 1
    return counts


def weight_load_runs(listing: str) -> list[int]:
    """The weight loads (evict-first 128-bit: LDG.E.EF.128) in SASS order, as runs: how many are
    issued one after another before the next bf16x2 or float32 multiply-add. A run of one is a thread
    with one weight load in flight; GROUPS in a run, an iteration's loads issued together."""
    runs, current = [], 0
    for line in listing.splitlines():
        if "LDG.E.EF.128" in line:
            current += 1
        elif current and ("HFMA2" in line or "FFMA" in line or "FADD" in line):
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


def main() -> None:
    block_n, warps = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (64, 2)
    weights = block_n * 128 * 2 // (32 * warps)  # one thread's weights in the two extra groups
    print(f"BLOCK_N {block_n}, {warps} warps: instructions a weight of the inner loop (SASS, sm_90)")
    for label, bf16x2 in (("float32 path", False), ("bf16x2 variant", True)):
        two, four = opcodes(block_n, 2, warps, bf16x2), opcodes(block_n, 4, warps, bf16x2)
        extra = {op: (four[op] - two[op]) / weights for op in set(two) | set(four) if four[op] != two[op]}
        top = ", ".join(f"{op} {n:.2f}" for n, op in sorted(((n, op) for op, n in extra.items()), reverse=True)[:8])
        print(f"  {label:15s} {sum(extra.values()):.2f}   ({top})")
    print("weight loads issued together (runs of LDG.E.EF.128 between multiply-adds), 4 groups an iteration:")
    for tile in (0, 1, 2):
        print(f"  tile {tile}: {weight_load_runs(sass(constants(block_n, 4, True, tile), warps))}")


if __name__ == "__main__":
    main()

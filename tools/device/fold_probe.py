"""Device side (issue 25): where lean's QBENCH_LEAN_FOLD=on step stops, and what it costs. On an H100,
qbench-int4's folded step passed the gate and then did not finish its first timed block
(results/h100/step5/README.md); this probe found it in torch.compile (results/h100/step6/README.md),
and after lean registered its ops with inductor first it compiled (results/h100/step7/). It runs, one
at a time, the parts a timed block runs, each line printed (flushed) before its part and its seconds
after it, every part synchronised:

    load, prefill, one eager step (the step's Python, uncompiled), COMPILED compiled steps (torch.compile,
    as lean runs them), the CUDA graph's capture (its warm-up steps on a side stream, then the capture),
    REPLAYS replays

Run it under `timeout`: the last line printed names the part that did not return. DUMP=S prints
every thread's Python stack every S seconds (faulthandler, from a watchdog thread, so a part stuck
in C still shows where): a compile that is slow shows torch._inductor's frames moving from dump to
dump, a kernel that does not end a synchronise that stays. After the replays, TIMED replays are
timed with CUDA events (ms a step, their median: a probe's figure, not a qbench session's). With
CUDA_LAUNCH_BLOCKING=1 every launch waits for its kernel, so an eager step that does not return is a
kernel that does not end (py-spy dump, where installed, shows which launch waits).

    timeout 120 python3 tools/device/fold_probe.py                  # qbench-int4, qwen2.5-0.5b, ctx 256
    MODEL=qwen2.5-7b CTX=2048 BACKEND=bf16 FOLD=on timeout 200 python3 tools/device/fold_probe.py
    FOLD=off ...                                                    # the same parts unfolded: the baseline
    COMPILE=off ...                                                 # the step uncompiled (QBENCH_LEAN_COMPILE=0)

On a CPU (Triton's interpreter: TRITON_INTERPRET=1 QBENCH_LEAN_GEMV=triton MODEL=tiny) it runs the
parts a CPU has (no compile, no capture) and says so.
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import time

import torch


def say(message: str) -> None:
    print(message, flush=True)


def timed(label: str, work, device: torch.device):
    say(f"{label} ...")
    began = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    say(f"{label}: {time.perf_counter() - began:.2f} s")
    return result


def main() -> None:
    from qbench.backend import LoadOptions
    from qbench.registry import load_backend
    from qbench.session.decode import token_stream
    from qbench.specs import load_model_spec

    model, backend_name = os.environ.get("MODEL", "qwen2.5-0.5b"), os.environ.get("BACKEND", "qbench-int4")
    ctx, compiled, replays, timed_replays = (
        int(os.environ.get(n, d)) for n, d in (("CTX", 256), ("COMPILED", 3), ("REPLAYS", 5), ("TIMED", 0))
    )
    if os.environ.get("DUMP"):
        faulthandler.dump_traceback_later(float(os.environ["DUMP"]), repeat=True, file=sys.stdout)
    os.environ.setdefault("QBENCH_LEAN_FOLD", os.environ.get("FOLD", "on"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if os.environ.get("COMPILE", "on") == "off":  # the step uncompiled, as QBENCH_LEAN_COMPILE=0 runs it
        os.environ["QBENCH_LEAN_COMPILE"] = "0"
    spec = load_model_spec(model)
    backend = load_backend(backend_name)
    options = LoadOptions(device=device.type, runtime="lean", max_cache_len=ctx + 64 + timed_replays, group_size=128)
    runner = timed(f"load {model} with {backend_name} (lean, QBENCH_LEAN_FOLD={os.environ['QBENCH_LEAN_FOLD']})",
                   lambda: backend.load(spec, options), device)
    for note in runner.notes:
        say(f"  note: {note}")
    tokens = token_stream(spec.vocab_size, ctx + 64 + timed_replays, 0, device.type)
    def step():  # the next position's token, as a block feeds them
        return runner.step(tokens[runner.next_position : runner.next_position + 1])

    with torch.inference_mode():
        timed(f"prefill to ctx {ctx}", lambda: runner.prefill(tokens[:ctx]), device)
        step_fn = runner._step_fn
        runner._step_fn = runner._uncompiled
        timed("eager step (uncompiled)", step, device)
        runner._step_fn = step_fn
        if device.type != "cuda":
            say("compiled steps, capture, replays: not on a CPU (lean compiles and captures on CUDA only)")
            return
        kind = "uncompiled" if step_fn == runner._uncompiled else "compiled"  # lean's choice (its notes say why)
        for i in range(compiled):
            timed(f"{kind} step {i + 1} of {compiled}", step, device)
        runner.next_position = ctx  # as a block starts: the capture's warm-up steps advance from here
        timed("capture (warm-up steps on a side stream, then the capture)", runner.capture_graph, device)
        runner.use_graph = True
        runner.next_position = ctx
        for i in range(replays):
            timed(f"replay {i + 1} of {replays}", step, device)
        if timed_replays:
            runner.next_position = ctx
            ms = []
            for _ in range(timed_replays):
                began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                began.record()
                step()
                ended.record()
                ended.synchronize()
                ms.append(began.elapsed_time(ended))
            say(f"{timed_replays} timed replays from ctx {ctx}: median {statistics.median(ms):.3f} ms a step "
                f"(min {min(ms):.3f}, max {max(ms):.3f})")
    faulthandler.cancel_dump_traceback_later()
    say("every part returned")


if __name__ == "__main__":
    main()

"""Device side (issue 25): why torch.compile of lean's folded qbench-int4 step did not return on the
H100. `fold_probe.py` with DUMP=30 showed the compile's main thread inside torch._inductor.ir's
__str__ for minutes (an ExternKernel printing its inputs, each a view of an earlier ExternKernel's
output, printing its inputs...): a string that grows with every layer (results/h100/step6/; since lean
registers its ops with inductor first, the step compiles there: step7/). This compiles the step
itself, with few layers, outside lean's fallback (which would catch an error and step uncompiled),
and prints what the compile raised (type, message, the last frames), or that it returned and how long
it took, for each configuration named:

    python3 tools/device/fold_compile.py [BACKEND:FOLD:LAYERS ...]
    # default: qbench-int4:on:2 bf16:on:2 qbench-int4:off:2

The model is qwen2.5-0.5b's shape (MODEL= another built-in) with LAYERS layers, synthetic weights,
ctx 64. On a CPU (Triton's interpreter: TRITON_INTERPRET=1 QBENCH_LEAN_GEMV=triton MODEL=tiny) the
same runs, compiled for the CPU.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

import torch


def say(message: str) -> None:
    print(message, flush=True)


def one(model: str, backend_name: str, fold: str, layers: int) -> None:
    from qbench.backend import LoadOptions
    from qbench.registry import load_backend
    from qbench.session.decode import token_stream
    from qbench.specs import _configs_dir, load_model_spec

    os.environ["QBENCH_LEAN_FOLD"] = fold
    data = json.loads(_configs_dir("models").joinpath(f"{model}.json").read_text())
    config = dict(data["config"], num_hidden_layers=layers)
    folder = tempfile.mkdtemp(prefix=f"{model}-{layers}-")
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = load_model_spec(folder)
    runner = load_backend(backend_name).load(
        spec, LoadOptions(device=device.type, runtime="lean", max_cache_len=96, group_size=128)
    )
    label = f"{backend_name}, QBENCH_LEAN_FOLD={fold}, {layers} layers of {model}"
    folded = [n for n in runner.notes if "QBENCH_LEAN_FOLD" in n or "folded" in n]
    say(f"== {label}: {folded[0] if folded else 'no fold note'}")
    tokens = token_stream(spec.vocab_size, 96, 0, device.type)
    torch._dynamo.reset()
    with torch.inference_mode():
        runner.prefill(tokens[:64])
        runner._step_fn = runner._uncompiled
        runner.step(tokens[64:65])  # eager: sets the step's token and position buffers
        compiled = torch.compile(runner._uncompiled, dynamic=False)
        began = time.perf_counter()
        try:
            logits = compiled(runner.token, runner.position)
            if device.type == "cuda":
                torch.cuda.synchronize()
            eager = runner._uncompiled(runner.token, runner.position)
            gap = (logits.float() - eager.float()).abs().max().item()
            say(f"   compiled in {time.perf_counter() - began:.1f} s; max |compiled - eager| logit {gap:.3g}")
        except Exception as error:  # noqa: BLE001 - what the compile raised is the finding
            say(f"   raised after {time.perf_counter() - began:.1f} s: {type(error).__name__}")
            text = str(error)
            say(f"   message ({len(text)} characters; the first 3000):\n{text[:3000]}")
            frames = traceback.extract_tb(error.__traceback__)[-14:]
            say("   last frames:\n" + "".join(traceback.format_list(frames)))
            cause = error.__cause__ or error.__context__
            if cause is not None:
                say(f"   cause: {type(cause).__name__}: {str(cause)[:1500]}")


def name_the_caller() -> None:
    """The first call of ExternKernel.__str__ from outside ir.py prints who made it (once a caller)."""
    from torch._inductor import ir

    original, seen = ir.ExternKernel.__str__, set()

    def traced(self):
        outer = [f for f in traceback.extract_stack(limit=60)[:-1] if not f.filename.endswith(("ir.py", "textwrap.py"))]
        where = tuple(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in outer[-8:])
        if where not in seen:
            seen.add(where)
            say("   ExternKernel.__str__ called from:\n      " + "\n      ".join(where))
        return original(self)

    ir.ExternKernel.__str__ = traced


def main() -> None:
    name_the_caller()
    model = os.environ.get("MODEL", "qwen2.5-0.5b")
    wanted = sys.argv[1:] or ["qbench-int4:on:2", "bf16:on:2", "qbench-int4:off:2"]
    for item in wanted:
        backend_name, fold, layers = item.split(":")
        one(model, backend_name, fold, int(layers))


if __name__ == "__main__":
    main()

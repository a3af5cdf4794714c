"""Where a cold 7B session's start goes: each import and first step timed in one fresh process (fast-sessions,
imports-cold.txt). Developer tooling for the GPU host, not part of qbench; names of the qbench before the caches
(cd25e3a's parent): run it with that wheel, `run.sh py tools/device/imports_probe.py`."""
# ruff: noqa  (a probe that times each import in order: the imports stay where they are timed)

import time
t = time.perf_counter()
def lap(name):
    global t
    now = time.perf_counter(); print(f"{name}: {now - t:.2f} s", flush=True); t = now
import torch; lap("import torch")
import transformers; lap("import transformers")
from transformers import AutoModelForCausalLM, StaticCache; lap("transformers auto classes")
import qbench.session.run; lap("import qbench.session.run")
from qbench.specs import load_model_spec
from qbench.model.build import _hf_config
config = _hf_config(load_model_spec("qwen2.5-7b"), torch.bfloat16); lap("qwen2 config (imports its module)")
with torch.device("meta"):
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
lap("qwen2 model class on meta (imports modeling)")
torch.zeros(1, device="cuda"); lap("CUDA context")
from qbench.model.build import build_model
from qbench.backend import LoadOptions
model, _ = build_model(load_model_spec("qwen2.5-7b"), LoadOptions(device="cuda"), dtype="bfloat16"); torch.cuda.synchronize(); lap("build qwen2.5-7b bf16 synthetic on the GPU")
del model; torch.cuda.empty_cache()
import bitsandbytes; lap("import bitsandbytes")
import gptqmodel; lap("import gptqmodel")

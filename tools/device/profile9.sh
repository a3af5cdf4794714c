# Device side (carry .whl and .devsite): where a 7B session's time goes before the fast-sessions work,
# then build both CUDA extensions and pack them so that later fresh machines can skip the builds.
source tools/device/setup.sh
repo=$(pwd)
mkdir -p /tmp/res && cd /tmp/res
python3 - <<'PY' 2>&1 | tee $OUT/imports.txt
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
PY
python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --backends bf16,bnb-nf4,torch-int4 --sessions 1 --db prof.sqlite 2>&1 | grep -E "session|error" | tee $OUT/profile.log
python3 -m qbench.cli export --db prof.sqlite --view sessions --format md | tee $OUT/sessions.md
cp prof.sqlite $OUT/
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 rc $?") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin rc $?") &
wait
tail -2 exl.log marlin.log
find /tmp/kc -name "*.so" -exec ls -la {} \;
du -sh /tmp/kc/*
cd /tmp && tar -cf - kc | xz -T16 -6 > /tmp/kc.tar.xz && ls -la /tmp/kc.tar.xz && split -b 15M /tmp/kc.tar.xz $OUT/kc.tar.xz.part- && ls -la $OUT

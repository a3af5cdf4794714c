# Device side, call 1 of this round (carry .devllama: the wheels llama-cpp-python's build and the
# gguf reader need, the slimmed llama-cpp-python sdist, and a fresh qbench wheel). lean with the
# split-K decode attention: a direct check against SDPA on the tiny spec, then qwen2.5-7b ctx 2048
# bf16 under hf and lean and torch-int4 under lean, graphs A/B, 3 sessions per cell, into
# runtimes2.sqlite (the llama.cpp calls add to it: same machine, same baseline); then lean bf16 with
# SDPA attention (QBENCH_LEAN_ATTENTION=sdpa, its own store: the cell key does not hold the switch).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  $(ls .devllama/*.whl | grep -v qbench)
rm -rf /tmp/qb && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devllama/qbench*.whl
mkdir -p /tmp/lcpsrc && tar xzf .devllama/lcp-slim.tar.gz -C /tmp/lcpsrc
set +e
REPO=$(pwd)
source tools/device/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
began=$(date +%s)
timeout 120 python3 - <<'PY' 2>&1 | tail -5
import os, torch
from qbench.api import LoadOptions
from qbench.registry import load_backend
from qbench.specs import load_model_spec
from qbench.session.decode import token_stream
from qbench.runtimes.lean import LeanRunner
spec = load_model_spec("tiny")
model = load_backend("bf16").load(spec, LoadOptions(device="cuda", weights="synthetic", seed=0, max_cache_len=300, group_size=128)).model
runs = {}
for choice in ("split-k", "sdpa"):
    os.environ["QBENCH_LEAN_ATTENTION"] = choice
    runs[choice] = LeanRunner(model, 300, "cuda")
print(runs["split-k"].notes)
tokens = token_stream(spec.vocab_size, 300, 0, "cuda")
a, b = runs["split-k"].prefill(tokens[:250]), runs["sdpa"].prefill(tokens[:250])
worst = 0.0
for p in range(250, 262):
    a, b = runs["split-k"].step(tokens[p:p+1]).float(), runs["sdpa"].step(tokens[p:p+1]).float()
    worst = max(worst, ((a - b).norm() / b.norm()).item())
print("tiny bf16 cuda: split-k vs sdpa worst relative logit error", worst)
PY
run() {  # seconds, then the compare arguments
  local limit=$1; shift
  timeout -s INT $limit python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both "$@" >> $OUT/call1.log 2>&1
  echo "rc $? after $(( $(date +%s) - began )) s: $*" | tee -a $OUT/call1.log
}
run 200 --backends bf16 --runtimes hf,lean --sessions 3 --db runtimes2.sqlite
run 150 --backends torch-int4 --runtimes lean --sessions 3 --db runtimes2.sqlite
QBENCH_LEAN_ATTENTION=sdpa run 100 --backends bf16 --runtimes lean --sessions 2 --db lean-sdpa.sqlite
grep -E "session [0-9]|forkserver|Error|error" $OUT/call1.log | cut -c1-220 | tail -30
python3 -m qbench.cli export --db runtimes2.sqlite --run all --format md 2>&1 | cut -c1-330 | head -30
python3 -m qbench.cli export --db lean-sdpa.sqlite --run all --format md 2>&1 | cut -c1-330 | head -12
tar czf $OUT/call1.tgz runtimes2.sqlite lean-sdpa.sqlite

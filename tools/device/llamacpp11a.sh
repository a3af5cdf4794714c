# Device side, call 1 (carry .devllama: the slimmed llama-cpp-python sdist, the wheels it and the
# gguf reader need, and a fresh qbench wheel): build llama-cpp-python with CUDA for sm_90, then a
# first look on the GPU (the tiny spec, two llama.cpp backends, graphs A/B), then the 7B run of
# llamacpp11b.sh for the rest of the call.
REPO=$(pwd)
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .devllama/*.whl
rm -rf /tmp/qb && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devllama/qbench*.whl
mkdir -p /tmp/lcpsrc && tar xzf .devllama/lcp-slim.tar.gz -C /tmp/lcpsrc
set +e
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
began=$(date +%s)
PYTHONPATH=/tmp/site CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/lcpwhl /tmp/lcpsrc/llama_cpp_python-0.3.36 \
  > $OUT/llama-build.log 2>&1
echo "llama-cpp-python build rc $? after $(( $(date +%s) - began )) s"; tail -3 $OUT/llama-build.log
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/lcpwhl/*.whl
source tools/device/env.sh
python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
python3 -m qbench.cli backends 2>&1 | grep -E "llamacpp|name" | cut -c1-160
time python3 -m qbench.cli compare --model tiny --ctx 256 --backends llamacpp-f16,llamacpp-q4_k_m \
  --graphs both --sessions 1 --db smoke11.sqlite > $OUT/smoke11.log 2>&1
echo "smoke rc $?"; grep -E "session 1|^llamacpp|^- " $OUT/smoke11.log | cut -c1-250
cp smoke11.sqlite $OUT/
# then the 7B run, for what is left of this call (llamacpp11b.sh resumes it on the warm machine)
LIMIT=$(( 560 - ($(date +%s) - began) )) bash $REPO/tools/device/llamacpp11b.sh

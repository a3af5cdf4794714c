# Device side, call 2 of this round, on the machine still warm from splitk10e.sh (carry nothing new):
# build llama-cpp-python with CUDA for sm_90 (as llamacpp11a.sh), then the llama.cpp backends into
# runtimes2.sqlite beside call 1's bf16 hf/lean rows (same machine), for what is left of the call;
# llamacpp11d.sh resumes.
began=$(date +%s)
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
PYTHONPATH=/tmp/site CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/lcpwhl /tmp/lcpsrc/llama_cpp_python-0.3.36 \
  > /tmp/llama-build.log 2>&1
echo "llama-cpp-python build rc $? after $(( $(date +%s) - began )) s"; tail -3 /tmp/llama-build.log
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/lcpwhl/*.whl
LIMIT=$(( 570 - ($(date +%s) - began) )) bash "$(dirname "$0")/llamacpp11d.sh"

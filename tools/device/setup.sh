# Device side: `source tools/device/setup.sh` at the start of every call (carry .whl and .devsite).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
tar xzf .devsite/srcpack.tar.gz -C /tmp/site
rm -rf /tmp/qb
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devsite/qbench*.whl
export PYTHONPATH=/tmp/qb:/tmp/site
export QBENCH_KERNEL_CACHE=/tmp/kc/qbench GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/kc/gptqmodel
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 MAX_JOBS=8
set +e

# Device side, on a machine still warm from a call that ran setup.sh: the same environment, no reinstall.
export PYTHONPATH=/tmp/qb:/tmp/site
export QBENCH_KERNEL_CACHE=/tmp/kc/qbench GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/kc/gptqmodel
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 MAX_JOBS=8
mkdir -p /tmp/res && cd /tmp/res

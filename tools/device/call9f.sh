# Device side, first call of a session that asked for an H200 without needing its memory: on an H200,
# the issue-12 validation cells (bf16, torch-int4 under hf and lean, lean with F.linear as on the H100
# runs: QBENCH_LEAN_GEMV=cublas); on an H100, fast9f.sh. Carry .whl, .devsite and .devq.
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  echo "H200: validation cells"
  export QBENCH_LEAN_GEMV=cublas
  LIMIT=540 bash tools/device/splitk10f.sh
else
  bash tools/device/fast9f.sh
fi

# Device side, bf16 only (no kernel builds): MODELS=m CTX=c[,c] [LIMIT=s] bash tools/device/replicate.sh
# Carry [".devrep"] holding nvidia_ml_py-*.whl and a qbench wheel (see README.md), plus db/replicate.sqlite
# from the previous call when a fresh machine must resume into the same file.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devrep/nvidia_ml_py-*.whl 2>&1 | tail -1
rm -rf /tmp/qb; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devrep/qbench*.whl
export PYTHONPATH=/tmp/qb:/tmp/site PYTHONUNBUFFERED=1
mkdir -p /tmp/res
if [ ! -f /tmp/res/replicate.sqlite ] && [ -f .devrep/db/replicate.sqlite ]; then cp .devrep/db/replicate.sqlite /tmp/res/; echo "db from carry"; fi
cd /tmp/res
set +e
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.mem,power.limit,temperature.gpu --format=csv
timeout ${LIMIT:-540} python3 -m qbench.cli replicate --models "$MODELS" --ctx "$CTX" --sessions 10 --db replicate.sqlite 2>&1 | tee -a $OUT/replicate-$(echo $MODELS-$CTX | tr ',' '_').log
echo "rc ${PIPESTATUS[0]}"
cp replicate.sqlite $OUT/

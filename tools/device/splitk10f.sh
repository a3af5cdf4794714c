# Device side, a fresh machine (carry .devq: the qbench wheel alone; bf16 and torch-int4 need no
# other package): lean with the split-K attention's combine kernel rewritten (one program per query
# head; the first version, one per kv head, took 100 us a layer: splitk10e.sh), qwen2.5-7b ctx 2048,
# the bf16 baseline under hf rerun on this machine, graphs A/B, 3 sessions per cell.
rm -rf /tmp/qb && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devq/qbench*.whl
source tools/device/env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
began=$(date +%s)
timeout -s INT ${LIMIT:-330} python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both \
  --backends bf16,torch-int4 --runtimes hf,lean --sessions 3 --db runtimes3.sqlite > $OUT/runtimes3.log 2>&1
echo "rc $? after $(( $(date +%s) - began )) s"
grep -E "session [0-9]|forkserver|Error|error" $OUT/runtimes3.log | cut -c1-200 | tail -14
python3 -m qbench.cli export --db runtimes3.sqlite --run all --format md 2>&1 | cut -c1-330 | sed -n 6,20p
python3 -m qbench.cli export --db runtimes3.sqlite --run all --view kernels --format md 2>&1 | grep -E "lean" | cut -c1-200 | head -12
cp runtimes3.sqlite $OUT/

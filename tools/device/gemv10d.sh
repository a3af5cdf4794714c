# Device side (carry .devq): lean bf16 after choose_blocks takes BLOCK_K = 1024 for K >= 8192 (down_proj),
# qwen2.5-7b ctx 2048, graphs A/B, 4 sessions, with the hf baseline on the same machine (2 sessions).
rm -rf /tmp/qb && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devq/qbench*.whl
source tools/device/env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
began=$(date +%s)
timeout -s INT 300 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both --backends bf16 \
  --runtimes lean --sessions 4 --db blockk.sqlite > $OUT/blockk.log 2>&1
timeout -s INT 120 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both --backends bf16 \
  --runtimes hf --sessions 2 --db blockk.sqlite >> $OUT/blockk.log 2>&1
echo "rc $? after $(( $(date +%s) - began )) s"
grep -E "session [0-9]|rror" $OUT/blockk.log | cut -c1-160 | tail -3
python3 -m qbench.cli export --db blockk.sqlite --run all --format md 2>&1 | grep -E "^\| bf16" | cut -c1-200
python3 -m qbench.cli export --db blockk.sqlite --run all --view kernels --format md > $OUT/blockk-kernels.md 2>&1
grep -E "gemv_kernel" $OUT/blockk-kernels.md | cut -c1-200
cp blockk.sqlite $OUT/

# Device side (carry .devq: the qbench wheel of the gemv10a run): issue 12's other card. The cells of
# gemv10a.sh's first part, bf16 and torch-int4 under hf and lean, qwen2.5-7b ctx 2048, graphs A/B,
# 3 sessions, on whatever card this is (the nvidia-h200 kind may run on an H100).
rm -rf /tmp/qb && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devq/qbench*.whl
source tools/device/env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo h200 || echo h100)
began=$(date +%s)
timeout -s INT 500 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both \
  --backends bf16,torch-int4 --runtimes hf,lean --sessions 3 --db val-$card.sqlite > $OUT/val-$card.log 2>&1
echo "rc $? after $(( $(date +%s) - began )) s"
grep -E "session [0-9]|rror" $OUT/val-$card.log | cut -c1-160 | tail -3
python3 -m qbench.cli export --db val-$card.sqlite --run all --format md 2>&1 | grep -E "^\| (bf16|torch)" | cut -c1-200
cp val-$card.sqlite $OUT/

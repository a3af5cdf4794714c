# Device side, after llamacpp11c.sh on the same warm machine: llama.cpp F16, Q8_0 and Q4_K_M on
# qwen2.5-7b ctx 2048, graphs A/B (one session process per setting), 3 sessions per cell, resuming
# into runtimes2.sqlite for LIMIT seconds (Q4_0 is not rerun: it failed the gate on these weights in
# ../results/h100/llamacpp; Q8_0 on the same cell says whether that is Q4_0's own error).
source "$(dirname "$0")/env.sh"
began=$(date +%s)
timeout -s INT ${LIMIT:-560} python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
  --backends llamacpp-f16,llamacpp-q8_0,llamacpp-q4_k_m --graphs both --sessions 3 --db runtimes2.sqlite --resume \
  >> $OUT/llama.log 2>&1
echo "compare rc $? after $(( $(date +%s) - began )) s" | tee -a $OUT/llama.log
grep -E "session [0-9]|forkserver|Error|error" $OUT/llama.log | tail -30 | cut -c1-220
python3 -m qbench.cli export --db runtimes2.sqlite --run all --format md 2>&1 | cut -c1-330 | head -30
tar czf $OUT/llama.tgz runtimes2.sqlite

# Device side, calls 2.. on the machine still warm from llamacpp11a.sh (carry nothing new): the
# llama.cpp backends beside bf16 under hf and lean (the baseline rerun on this machine), qwen2.5-7b, ctx 2048, graphs A/B, 3 sessions per cell. Each call runs what fits in its
# time and stops cleanly; the next call resumes into the same store (--resume).
source "$(dirname "$0")/env.sh"
began=$(date +%s)
timeout -s INT ${LIMIT:-540} python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
  --backends bf16,llamacpp-f16,llamacpp-q4_0,llamacpp-q4_k_m,llamacpp-q8_0 --runtimes hf,lean \
  --graphs both --sessions 3 --db runtimes11.sqlite --resume >> $OUT/runtimes11.log 2>&1
echo "compare rc $? after $(( $(date +%s) - began )) s"
grep -E "session [0-9]|forkserver|note|Error|error" $OUT/runtimes11.log | tail -40 | cut -c1-250
for view in compare kernels sessions; do
  python3 -m qbench.cli export --db runtimes11.sqlite --run all --view $view --format md --out $OUT/runtimes11-$view.md
done
python3 -m qbench.cli export --db runtimes11.sqlite --run all --format csv --out $OUT/runtimes11.csv
python3 -m qbench.cli export --db runtimes11.sqlite --run all --format json --out $OUT/runtimes11.json
cp runtimes11.sqlite $OUT/
cat $OUT/runtimes11-compare.md | cut -c1-400 | head -60

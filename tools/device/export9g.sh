# Device side, call 3 of 3, warm machine: finish the seed comparison if call 2 had to stop it
# (--resume), then its exports: the main table and the per-session breakdown.
source tools/device/env.sh
if grep -q "interrupted by SIGINT" /tmp/res/seed10.log 2>/dev/null; then
  { time python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
      --backends bf16,bnb-nf4,awq-marlin,gptq-exllamav2,torch-int4 --graphs both --db seed10.sqlite --resume ; } > $OUT/seed10-resume.log 2>&1
  tail -4 $OUT/seed10-resume.log
fi
python3 -m qbench.cli export --db seed10.sqlite --run all --view sessions --format md --out $OUT/seed10-sessions.md
python3 -m qbench.cli export --db seed10.sqlite --run all --format md --out $OUT/seed10.md
grep -E "^\| qwen" $OUT/seed10-sessions.md | head -5 | cut -c1-250
cut -c1-300 $OUT/seed10.md | head -30
cp seed10.sqlite $OUT/

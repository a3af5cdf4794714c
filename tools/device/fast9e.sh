# Device side, call 3 of 3, warm machine: export the seed comparison; then forked against spawned
# sessions (QBENCH_FORKSERVER=0) on one eager+graphs cell, interleaved: are the figures the same?
source tools/device/env.sh
python3 -m qbench.cli export --db seed.sqlite --view sessions --format md --out $OUT/seed-sessions.md
python3 -m qbench.cli export --db seed.sqlite --format md --out $OUT/seed.md
cp seed.sqlite $OUT/
for round in 1 2; do
  for mode in 1 0; do
    QBENCH_FORKSERVER=$mode python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --backends bf16 \
      --graphs both --sessions 3 --db ab-fork$mode.sqlite 2>&1 | grep -E "^bf16|forkserver|error" | sed "s/^/fork=$mode round $round: /"
  done
done | tee $OUT/ab.log
cp ab-fork1.sqlite ab-fork0.sqlite $OUT/

# Device side (carry .whl, .devsite: the wheel before the change, .devq: after): bnb-nf4's per-session
# cost with and without the forkserver importing torch.compile's modules once, on one machine;
# qwen2.5-7b ctx 2048, graphs A/B, 4 sessions each (the first run fills the weights cache).
source tools/device/setup.sh
rm -rf /tmp/qbnew && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qbnew .devq/qbench*.whl
mkdir -p /tmp/res && cd /tmp/res
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for v in before after; do
  [ $v = after ] && export PYTHONPATH=/tmp/qbnew:/tmp/site
  began=$(date +%s)
  python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both --backends bnb-nf4 --sessions 4 --db preload-$v.sqlite > $OUT/preload-$v.log 2>&1
  echo "$v rc $? after $(( $(date +%s) - began )) s"
  grep -E "forkserver" $OUT/preload-$v.log | cut -c1-220
  python3 -m qbench.cli export --db preload-$v.sqlite --run all --view sessions --format md > $OUT/preload-$v-sessions.md 2>&1
  grep -E "^\| qwen" $OUT/preload-$v-sessions.md | cut -c1-230
  cp preload-$v.sqlite $OUT/
done

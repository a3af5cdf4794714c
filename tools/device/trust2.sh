# Device side, second call of the trust issue's evidence (carry .whl and .devsite: tools/device/fetch.sh).
#  1. the eager cell in three more invocations with the final defaults (no pinning, as the host study
#     of trust.sh found pinning and GC control did not narrow the spread);
#  2. awq-marlin's stored bytes against the corrected formula: smollm2-135m at group size 64 (Marlin
#     pads K = 576 to 640) and qwen2.5-7b at group size 128; the first run builds the Marlin kernel.
source tools/device/setup.sh
repo=$(pwd)
mkdir -p /tmp/res && cd /tmp/res
(lscpu | grep -E "^(Thread|Core|Socket|NUMA|Model name|L3)"; for c in 0 1 8; do echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list 2>/dev/null)"; done) | tee $OUT/topology.txt
cell="compare --model qwen2.5-7b --backends bf16 --ctx 2048 --graphs off --sessions 1"
for i in 1 2 3; do
  python3 -m qbench.cli $cell --db after.sqlite > after-$i.txt 2>&1; echo "after $i rc $?"; grep -E "bf16 +off" after-$i.txt
  cp after.sqlite $OUT/
done
cat after-*.txt > $OUT/after.log
timeout 420 python3 -m qbench.cli compare --model smollm2-135m --backends awq-marlin --graphs on --sessions 1 --db awq.sqlite 2>&1 | tee $OUT/awq.log | grep -vE "^\s*$" | tail -25
cp awq.sqlite $OUT/
timeout 120 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --backends awq-marlin --graphs on --sessions 1 --db awq.sqlite 2>&1 | tee -a $OUT/awq.log | grep -E "awq-marlin|session|error" | tail -5
cp awq.sqlite $OUT/

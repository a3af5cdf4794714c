# Device side (carry .whl and .devsite): the fast-sessions change on the H100 without kernel builds:
# qwen2.5-7b, three backends that need no build, 3 sessions per cell (graphs A/B). The first session
# of each cell quantises and stores its weights and reference logits; the later ones read them.
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
export QBENCH_CACHE_DIR=/tmp/wc
start=$(date +%s.%N)
python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --backends bf16,bnb-nf4,torch-int4 --sessions 3 --db fast.sqlite 2>&1 | tee $OUT/fast.log | grep -E "session|forkserver|note|error|Traceback" 
echo "wall $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a $OUT/fast.log
python3 -m qbench.cli export --db fast.sqlite --view sessions --format md --out $OUT/fast-sessions.md
python3 -m qbench.cli export --db fast.sqlite --format md --out $OUT/fast.md
cat $OUT/fast-sessions.md | head -30
cp fast.sqlite $OUT/
python3 -m qbench.cli cache

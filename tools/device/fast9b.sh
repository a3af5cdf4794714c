# Device side (carry .whl and .devsite): does the forkserver serve on the GPU host (the tripwire keeps
# CUDA out of its preload), and do forked sessions run? qwen2.5-0.5b, two backends that need no build.
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
export QBENCH_CACHE_DIR=/tmp/wc
python3 -m qbench.cli compare --model qwen2.5-0.5b --ctx 2048 --backends bf16,torch-int4 --sessions 2 --db fork.sqlite 2>&1 | tee $OUT/fork.log | grep -E "session|forkserver|note|error|Traceback|bf16 |torch-int4 "
python3 -m qbench.cli export --db fork.sqlite --view sessions --format md --out $OUT/fork-sessions.md; grep -E "^\| qwen" $OUT/fork-sessions.md
cp fork.sqlite $OUT/

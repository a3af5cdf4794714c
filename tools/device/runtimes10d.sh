# Device side (carry .whl and .devsite), a fresh machine, no kernel builds: lean's attention as two
# batched matrix products (the SDPA version ran 1.3 ms a step in attention), bf16 and torch-int4
# under hf and lean, graphs on, baseline rerun on the same machine.
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
timeout 270 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --backends bf16,torch-int4 --runtimes hf,lean \
  --graphs on --sessions 1 --db lean2.sqlite > $OUT/lean2.log 2>&1
echo "rc $?" >> $OUT/lean2.log
grep -E "session|forkserver|^bf16|^torch|lean:" $OUT/lean2.log | cut -c1-240
timeout 20 python3 -m qbench.cli export --db lean2.sqlite --run all --view kernels --format md --out $OUT/lean2-kernels.md
cp lean2.sqlite $OUT/

# Device side, a fresh machine (carry .whl and .devsite): build the exllamav2 and Marlin kernels, then
# the three 4-bit backends that need them under hf and lean with the split-K attention, qwen2.5-7b
# ctx 2048, graphs A/B, with the bf16 baseline under both runtimes rerun on this machine, for LIMIT s.
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
began=$(date +%s)
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $?") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $?") &
wait
echo "kernel builds: $(( $(date +%s) - began )) s"
timeout -s INT $(( ${LIMIT:-560} - ($(date +%s) - began) )) python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
  --graphs both --backends bf16,bnb-nf4,awq-marlin,gptq-exllamav2 --runtimes hf,lean --sessions 2 --db runtimes4.sqlite \
  > $OUT/runtimes4.log 2>&1
echo "rc $? after $(( $(date +%s) - began )) s"
grep -E "session [0-9]|forkserver|Error|error" $OUT/runtimes4.log | cut -c1-200 | tail -20
python3 -m qbench.cli export --db runtimes4.sqlite --run all --format md 2>&1 | cut -c1-330 | sed -n 6,24p
cp runtimes4.sqlite $OUT/

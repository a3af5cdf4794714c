# Device side, a fresh machine (carry .whl and .devsite): issue 9's awq-marlin without gptqmodel's
# import, and issue 10's GEMV measurements. Builds the exllamav2 and Marlin kernels in the background
# while tools/device/gemv10.py measures batch-1 GEMV read rates (cuBLAS, torch.compile, qbench's
# Triton GEMV); then 3 awq-marlin sessions (the first goes through gptqmodel, later ones load qbench's
# copy of the library) with the per-session breakdown.
source tools/device/setup.sh
repo=$PWD
mkdir -p /tmp/res && cd /tmp/res
began=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $? at $(( $(date +%s) - began )) s") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $? at $(( $(date +%s) - began )) s") &
python3 $repo/tools/device/gemv10.py 2>&1 | grep -v Warning | tee $OUT/gemv10.log
echo "gemv bench done at $(( $(date +%s) - began )) s"
wait
tail -3 marlin.log
python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both --backends awq-marlin --sessions 3 --db awq9.sqlite > $OUT/awq9.log 2>&1
echo "awq rc $? at $(( $(date +%s) - began )) s"
grep -E "session [0-9]|Error|error|Marlin" $OUT/awq9.log | cut -c1-220 | tail -12
python3 -m qbench.cli export --db awq9.sqlite --run all --view sessions --format md > $OUT/awq9-sessions.md 2>&1
cut -c1-250 $OUT/awq9-sessions.md | tail -8
python3 -m qbench.cli export --db awq9.sqlite --run all --format md 2>&1 | cut -c1-300 | sed -n 1,30p
cp awq9.sqlite $OUT/

# Device side, a fresh machine (carry .whl and .devsite): lean with qbench's Triton GEMV (q/k/v and
# gate/up fused) and the K/V write as one in-place op, qwen2.5-7b ctx 2048, graphs A/B:
# bf16 and torch-int4 under hf and lean (3 sessions) while the exllamav2 and Marlin kernels build;
# then one lean session each of bnb-nf4, awq-marlin, gptq-exllamav2 with QBENCH_LEAN_COMPILE=all
# (torch.compile tried where the backend does not declare it).
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
began=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $? at $(( $(date +%s) - began )) s") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $? at $(( $(date +%s) - began )) s") &
timeout -s INT 330 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs both \
  --backends bf16,torch-int4 --runtimes hf,lean --sessions 3 --db gemv10.sqlite > $OUT/gemv10a.log 2>&1
echo "compare rc $? at $(( $(date +%s) - began )) s"
grep -E "session [0-9]|rror" $OUT/gemv10a.log | cut -c1-160 | tail -4
python3 -m qbench.cli export --db gemv10.sqlite --run all --format md 2>&1 | grep -E "^\| (bf16|torch)|^- " | cut -c1-250
wait
cp gemv10.sqlite $OUT/
QBENCH_LEAN_COMPILE=all timeout -s INT $(( 575 - ($(date +%s) - began) )) python3 -m qbench.cli compare --model qwen2.5-7b \
  --ctx 2048 --graphs on --backends bnb-nf4,awq-marlin,gptq-exllamav2 --runtimes lean --sessions 1 --db trial.sqlite > $OUT/trial.log 2>&1
echo "trial rc $? at $(( $(date +%s) - began )) s"
python3 -m qbench.cli export --db trial.sqlite --run all --format md 2>&1 | grep -E "^\| (bnb|awq|gptq)|^- " | cut -c1-250
cp trial.sqlite $OUT/

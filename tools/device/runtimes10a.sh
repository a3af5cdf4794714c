# Device side, call 1 of 3 (carry .whl and .devsite): build both CUDA extensions in parallel and,
# meanwhile, a first look at `lean` on the GPU (qwen2.5-0.5b, backends that need no build): does it
# compile, capture and pass the gate?
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
began=$(date +%s)
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $?") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $?") &
python3 -m qbench.cli compare --model qwen2.5-0.5b --ctx 2048 --backends bf16,torch-int4,bnb-nf4 --runtimes hf,lean \
  --graphs both --sessions 1 --db smoke.sqlite > $OUT/smoke.log 2>&1
echo "smoke rc $? after $(( $(date +%s) - began )) s"
grep -E "session|^bf16|^torch|^bnb|lean|error|Error" $OUT/smoke.log | cut -c1-250
wait
echo "kernel builds done after $(( $(date +%s) - began )) s"
cp smoke.sqlite $OUT/

# Device side, call 1 of 3 on a fresh machine (carry .whl and .devsite): build both CUDA extensions in
# parallel, then time the no-option `qbench compare` (issue 9, goal 3) on the final code.
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
began=$(date +%s)
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $? at $(( $(date +%s) - began )) s") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $? at $(( $(date +%s) - began )) s") &
wait
echo "kernel builds: $(( $(date +%s) - began )) s"
{ time python3 -m qbench.cli compare ; } > $OUT/no-option3.log 2>&1
echo "rc $?" >> $OUT/no-option3.log
tail -30 $OUT/no-option3.log | cut -c1-250
python3 -m qbench.cli export --db results/qbench.sqlite --view sessions --format md --out $OUT/no-option3-sessions.md
cp results/qbench.sqlite $OUT/no-option3.sqlite

# Device side, call 1 of 3 (carry .whl and .devsite): build both CUDA extensions (in parallel, as a
# fresh machine must), then time the no-option `qbench compare` (fast-sessions goal 3). NAME names the files
# in $OUT (noopt unless set).
NAME=${NAME:-noopt}
source tools/device/setup.sh
mkdir -p /tmp/res && cd /tmp/res
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
began=$(date +%s)
(python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $?") &
(python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $?") &
wait
echo "kernel builds: $(( $(date +%s) - began )) s"
{ time python3 -m qbench.cli compare ; } > $OUT/$NAME.log 2>&1
echo "rc $?" >> $OUT/$NAME.log
tail -40 $OUT/$NAME.log
python3 -m qbench.cli export --db results/qbench.sqlite --view sessions --format md --out $OUT/$NAME-sessions.md
cp results/qbench.sqlite $OUT/$NAME.sqlite

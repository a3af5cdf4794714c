# Device side (carry .whl and .devsite): issue 23's H100 evidence, in phases chained on one warm machine.
#   PHASE=first   setup, both CUDA extension builds beside a first look at the gemlite backends on
#                 qwen2.5-0.5b, then the 7B comparison until STOP_S seconds have passed
#   PHASE=resume  the same comparison with --resume until STOP_S
#   PHASE=export  resume what is left (if any), then gemlite-int4 at g64 (exports and report are made
#                 from the returned store on any machine: qbench export / report read it)
# Every phase copies the store to $OUT, so a fresh machine can resume from it (.devdb/evidence23.sqlite).
# Run as tried (PHASE=first, 2026-12-06): the call hit its 600 s limit while the two extension builds
# ran beside the 0.5b look, whose gemlite sessions took 137-162 s each (first-call compile and
# autotune); `... | tail` then returned nothing. Lessons: start no pipeline whose tail you need (write
# to $OUT and tail the file), and keep gemlite's autotune results across sessions before a full run.
PHASE=${PHASE:-first}; STOP_S=${STOP_S:-540}
began=$(date +%s)
if [ "$PHASE" = first ]; then source tools/device/setup.sh; else source tools/device/env.sh; cd - >/dev/null; fi
mkdir -p /tmp/res
[ -f /tmp/res/evidence23.sqlite ] || { [ -f .devdb/evidence23.sqlite ] && cp .devdb/evidence23.sqlite /tmp/res/; }
cd /tmp/res
left() { echo $(( STOP_S - ($(date +%s) - began) )); }
BACKENDS=bf16,bnb-nf4,awq-marlin,gptq-exllamav2,torch-int4,fp8-wo,fp8-dyn,int8-wo,gemlite-int4
compare7b() {
  timeout -s INT "$(left)" python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs on \
    --runtimes hf,lean --backends $BACKENDS --sessions 3 --db evidence23.sqlite --resume "$@"
}
if [ "$PHASE" = first ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  (python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()" > exl.log 2>&1; echo "exllamav2 build rc $?") &
  (python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))" > marlin.log 2>&1; echo "marlin build rc $?") &
  python3 -m qbench.cli backends 2>&1 | cut -c1-160
  python3 -m qbench.cli compare --model qwen2.5-0.5b --ctx 512 --graphs on --runtimes hf,lean \
    --backends bf16,fp8-wo,fp8-dyn,int8-wo,gemlite-int4 --sessions 1 --db look05b.sqlite > $OUT/look05b.log 2>&1
  tail -25 $OUT/look05b.log
  cp look05b.sqlite $OUT/
  wait
  echo "builds done at $(( $(date +%s) - began )) s"
fi
if [ "$PHASE" != export ] || [ "$(left)" -gt 60 ]; then
  compare7b >> $OUT/evidence23-$PHASE.log 2>&1; echo "compare rc $?" >> $OUT/evidence23-$PHASE.log
  tail -30 $OUT/evidence23-$PHASE.log
fi
if [ "$PHASE" = export ]; then
  timeout -s INT "$(left)" python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 --graphs on --runtimes hf,lean \
    --backends gemlite-int4 --group-size 64 --sessions 3 --db evidence23.sqlite --resume > $OUT/evidence23-g64.log 2>&1
  tail -8 $OUT/evidence23-g64.log
fi
cp evidence23.sqlite $OUT/ 2>/dev/null
echo "phase $PHASE: $(( $(date +%s) - began )) s"

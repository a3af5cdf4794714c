# Device side, bf16 only (no kernel builds): the trust issue's host evidence on the H100.
# Carry [".devrep"] holding nvidia_ml_py-*.whl, a fresh qbench wheel (the change) and old/qbench*.whl
# (the commit before it): `bash tools/device/trust.sh` writes everything to $OUT as it goes.
#  1. the same eager cell (qwen2.5-7b, bf16, ctx 2048, --graphs off --sessions 1) in three separate
#     invocations of each qbench, interleaved old/new so that the host's drift hits both alike;
#  2. tools/device/host_study.py: which controls (pinning, GC) narrow the spread, in 6 fresh processes.
set -e
repo=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devrep/nvidia_ml_py-*.whl 2>&1 | tail -1
rm -rf /tmp/qb /tmp/qb_old
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb .devrep/qbench*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qb_old .devrep/old/qbench*.whl
export PYTHONUNBUFFERED=1
mkdir -p /tmp/res && cd /tmp/res
set +e
nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.mem,power.limit,temperature.gpu --format=csv | tee $OUT/machine.txt
(nproc; grep -m1 'model name' /proc/cpuinfo; cat /proc/loadavg) | tee -a $OUT/machine.txt
cell="compare --model qwen2.5-7b --backends bf16 --ctx 2048 --graphs off --sessions 1"
for i in 1 2 3; do
  PYTHONPATH=/tmp/qb:/tmp/site python3 $repo/tools/device/invocations.py probe --label old-$i >> probes.jsonl
  PYTHONPATH=/tmp/qb_old:/tmp/site python3 -m qbench.cli $cell --db old.sqlite > old-$i.txt 2>&1
  echo "old $i rc $?"; grep -E "bf16 +off" old-$i.txt
  PYTHONPATH=/tmp/qb:/tmp/site python3 -m qbench.cli $cell --db new.sqlite > new-$i.txt 2>&1
  echo "new $i rc $?"; grep -E "bf16 +off" new-$i.txt
  cp old.sqlite new.sqlite probes.jsonl $OUT/
done
cat old-*.txt new-*.txt > $OUT/invocations.log
PYTHONPATH=/tmp/qb:/tmp/site python3 $repo/tools/device/invocations.py table probes.jsonl before=old.sqlite after=new.sqlite | tee $OUT/invocations.md
PYTHONPATH=/tmp/qb:/tmp/site timeout ${STUDY_LIMIT:-300} python3 $repo/tools/device/host_study.py --sessions ${STUDY_SESSIONS:-6} --out $OUT/host-study.jsonl | tee $OUT/host-study.md

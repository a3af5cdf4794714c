#!/usr/bin/env bash
# qbench on the offline GPU host: one runner, by subcommand (developer tooling, not part of qbench).
# Run it from the repository root of the device's copy; the runbook (README.md beside it) says what to
# carry and which command reproduces each committed result.
#
#   run.sh setup [--builds exllamav2,marlin,llamacpp|all]   install the carried packs; builds in the background
#   run.sh wait-builds                                     wait for the builds setup started (this machine)
#   run.sh compare ARGS...                                 qbench compare ARGS under timeout -s INT, from /tmp/res
#   run.sh qbench COMMAND ARGS...                          any qbench command the same way (replicate, cache, ...)
#   run.sh py SCRIPT|- ARGS...                             python3 with qbench's environment, from /tmp/res
#   run.sh export --db NAME.sqlite [--as PREFIX]           tables of every run (md views, csv, json) into $OUT
#   run.sh probe                                           the host: GPU, driver, clocks, CPUs, load
#   run.sh ncu SCRIPT ARGS...                              Nsight Compute's sections of the script's GEMV kernels
#
# Everything goes to $OUT as it happens (logs, stores, tables), so a call cut by its limit still returns
# what it did. Settings (environment): CALL_LIMIT (s, default 600) and MARGIN (s, default 45): a qbench
# command gets SIGINT MARGIN seconds before the call's limit, counted from CALL_BEGAN (epoch seconds;
# default: when the shell that ran this script started), so it stops cleanly and `--resume` continues it;
# LOG names the log file in $OUT (default: the store's name, or the subcommand; .log unless LOG has an
# extension); QB_DIR is the qbench install
# to run (default /tmp/qb; setup puts a carried old/ wheel in /tmp/qb_old).
set -uo pipefail

T=${DEVICE_TMP:-/tmp}  # where installs, caches and the working folder live (another root only for a dry run)

case $T in /*) ;; *) echo "run.sh: DEVICE_TMP must be an absolute path, not '$T'" >&2; exit 2 ;; esac
REPO=$(pwd)
RES=$T/res
CARRIED_STORES=(.devq/db .devrep/db .devdb)  # folders of the packs where a store to resume into travels
OUT=${OUT:?run.sh writes everything to \$OUT; run it through the device tool}
case $OUT in /*) ;; *) echo "run.sh: \$OUT must be an absolute path, not '$OUT'" >&2; exit 2 ;; esac
mkdir -p "$RES" "$OUT"

environment() {
  export PYTHONPATH=${QB_DIR:-$T/qb}:$T/site
  export QBENCH_KERNEL_CACHE=$T/kc/qbench GPTQMODEL_TORCH_EXTENSIONS_DIR=$T/kc/gptqmodel
  export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 MAX_JOBS=8
  export PATH=/usr/local/cuda/bin:$PATH
}

install() {  # target, wheels...
  local target=$1; shift
  [ $# -gt 0 ] || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

setup() {
  local builds=""
  while [ $# -gt 0 ]; do
    case $1 in
      --builds) builds=$2; shift 2 ;;
      *) echo "setup: unknown option $1" >&2; return 2 ;;
    esac
  done
  [ "$builds" = all ] && builds=exllamav2,marlin,llamacpp
  local others=() qbench="" pack seen=" "
  for pack in .whl .devsite .devrep .devllama .devq; do
    [ -d "$pack" ] || continue
    for wheel in "$pack"/*.whl; do
      [ -f "$wheel" ] || continue
      case $(basename "$wheel") in
        qbench*) qbench=$wheel ;;
        # a wheel two packs carry (nvidia-ml-py) is installed once: pip refuses a file named twice
        *) case $seen in *" $(basename "$wheel") "*) ;; *) others+=("$wheel"); seen="$seen$(basename "$wheel") " ;; esac ;;
      esac
    done  # the last pack holding a qbench wheel wins: .devq (a newer wheel alone) over the full packs
  done
  install $T/site "${others[@]}" || return 1
  [ -f .devsite/srcpack.tar.gz ] && tar xzf .devsite/srcpack.tar.gz -C $T/site
  [ -f .devllama/lcp-slim.tar.gz ] && mkdir -p $T/lcpsrc && tar xzf .devllama/lcp-slim.tar.gz -C $T/lcpsrc
  [ -n "$qbench" ] || { echo "setup: no qbench wheel carried (tools/device/fetch.sh makes one)" >&2; return 1; }
  rm -rf $T/qb && install $T/qb "$qbench" || return 1
  if ls .devrep/old/qbench*.whl >/dev/null 2>&1; then rm -rf $T/qb_old && install $T/qb_old .devrep/old/qbench*.whl; fi
  echo "setup: $(basename "$qbench") in $T/qb, ${#others[@]} wheels in $T/site" | tee -a "$OUT/setup.log"
  # carried stores go into $T/res now: a later call on this warm machine that does not carry the pack
  # again still resumes into them (a pack is not kept there between calls)
  local folder store
  for folder in "${CARRIED_STORES[@]}"; do
    for store in "$folder"/*.sqlite; do
      [ -f "$store" ] && [ ! -f "$RES/$(basename "$store")" ] && cp "$store" "$RES/" && echo "setup: store $store in $RES"
    done
  done
  environment
  mkdir -p $T/kc/builds
  local name
  for name in ${builds//,/ }; do
    [ -f $T/kc/builds/$name.rc ] && grep -qx 0 $T/kc/builds/$name.rc && { echo "build $name: done earlier"; continue; }
    rm -f $T/kc/builds/$name.rc
    ( began=$(date +%s); build_$name > "$OUT/build-$name.log" 2>&1; rc=$?
      echo "build $name: rc $rc after $(( $(date +%s) - began )) s" >> "$OUT/build-$name.log"
      echo $rc > $T/kc/builds/$name.rc ) < /dev/null >> "$OUT/build-$name.log" 2>&1 &
    echo $! > $T/kc/builds/$name.pid
    echo "build $name: started in the background (log $OUT/build-$name.log; wait with run.sh wait-builds)"
  done
}

build_exllamav2() { python3 -c "from qbench.backends.gptq_exllamav2 import exllamav2_ext; exllamav2_ext()"; }
build_marlin() {
  python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as p; print(p(torch.float16))"
}
build_llamacpp() {  # the slim sdist from .devllama; its CUDA build never shares a process with torch's
  local source
  source=$(ls -d $T/lcpsrc/llama_cpp_python-* | head -1)
  PYTHONPATH=$T/site CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip wheel -q --no-build-isolation --no-deps --no-index \
    -w $T/lcpwhl "$source" && install $T/site $T/lcpwhl/llama_cpp_python-*.whl
}

wait_builds() {
  local began pending name
  began=$(date +%s)
  while :; do
    pending=""
    for name in exllamav2 marlin llamacpp; do
      [ -f "$OUT/build-$name.log" ] && [ ! -f $T/kc/builds/$name.rc ] || continue
      if kill -0 "$(cat $T/kc/builds/$name.pid 2>/dev/null)" 2>/dev/null; then pending+=" $name"
      else echo 1 > $T/kc/builds/$name.rc; echo "build $name: its process is gone without a result" >> "$OUT/build-$name.log"; fi
    done
    [ -z "$pending" ] && break
    sleep 5
  done
  for name in exllamav2 marlin llamacpp; do
    [ -f $T/kc/builds/$name.rc ] && tail -n 1 "$OUT/build-$name.log"
  done
  echo "wait-builds: waited $(( $(date +%s) - began )) s"
}

seconds_left() {  # until MARGIN before the call's limit
  local began=${CALL_BEGAN:-}
  [ -n "$began" ] || began=$(( $(date +%s) - $(ps -o etimes= -p $PPID 2>/dev/null | tr -d ' ' || echo 0) ))
  echo $(( ${CALL_LIMIT:-600} - ${MARGIN:-45} - ($(date +%s) - began) ))
}

store_of() {  # the value of --db in the arguments, if any
  while [ $# -gt 0 ]; do
    case $1 in --db) echo "${2:-}"; return ;; --db=*) echo "${1#--db=}"; return ;; esac
    shift
  done
}

log_file() {  # $OUT/NAME.log, or $OUT/NAME where NAME has an extension of its own (probes.jsonl)
  case $1 in *.sqlite) echo "$OUT/${1%.sqlite}.log" ;; *.*) echo "$OUT/$1" ;; *) echo "$OUT/$1.log" ;; esac
}

bring_store() {  # a store not yet in $T/res: from this call's $OUT, or carried to resume into
  local carried
  [ -f "$RES/$1" ] && return 0
  for carried in "$OUT" "${CARRIED_STORES[@]}"; do
    [ -f "$carried/$1" ] && { cp "$carried/$1" "$RES/"; echo "store $1 from $carried"; return 0; }
  done
}

run_qbench() {  # qbench ARGS from $T/res under timeout -s INT; log and store into $OUT
  environment
  local db log left began rc
  db=$(store_of "$@")
  case $db in */*) echo "run.sh: give --db a bare file name (it lives in $T/res and \$OUT)" >&2; return 2 ;; esac
  [ -n "$db" ] && bring_store "$db"
  log=$(log_file "${LOG:-${db:-$1}}")
  left=$(seconds_left)
  if [ "$left" -lt 30 ]; then echo "run.sh: $left s left before the call's margin; not starting qbench $*" | tee -a "$log"; return 3; fi
  began=$(date +%s)
  echo "\$ qbench $* (SIGINT after $left s)" >> "$log"
  (cd "$RES" && timeout -s INT "$left" python3 -m qbench.cli "$@") >> "$log" 2>&1
  rc=$?
  echo "rc $rc after $(( $(date +%s) - began )) s: qbench $*" | tee -a "$log"
  if [ -n "$db" ]; then [ -f "$RES/$db" ] && cp "$RES/$db" "$OUT/"
  elif [ -f "$RES/results/qbench.sqlite" ]; then cp "$RES/results/qbench.sqlite" "$OUT/${LOG:-qbench}.sqlite"; fi
  return $rc
}

export_tables() {
  environment
  local db="" prefix="" view
  while [ $# -gt 0 ]; do
    case $1 in
      --db) db=$2; shift 2 ;;
      --as) prefix=$2; shift 2 ;;
      *) echo "export: unknown option $1" >&2; return 2 ;;
    esac
  done
  [ -n "$db" ] || { echo "export: --db NAME.sqlite" >&2; return 2; }
  bring_store "$db"
  prefix=${prefix:-${db%.sqlite}}
  cd "$RES" || return 1
  for view in compare kernels sessions; do
    python3 -m qbench.cli export --db "$db" --run all --view "$view" --format md --out "$OUT/$prefix-$view.md" \
      >> "$OUT/export.log" 2>&1 || echo "export: no $view view in $db (export.log)"
  done
  python3 -m qbench.cli export --db "$db" --run all --format csv --out "$OUT/$prefix.csv" >> "$OUT/export.log" 2>&1
  python3 -m qbench.cli export --db "$db" --run all --format json --out "$OUT/$prefix.json" >> "$OUT/export.log" 2>&1
  cp "$db" "$OUT/" 2>/dev/null
  echo "export: $prefix-{compare,kernels,sessions}.md, $prefix.csv, $prefix.json in \$OUT"
}

probe() {
  {
    nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu \
      --format=csv
    echo "cpus $(nproc); load $(cat /proc/loadavg)"
    lscpu | grep -E "^(Model name|Thread|Core|Socket|NUMA|L3)"
    python3 --version
  } 2>&1 | tee "$OUT/probe.txt"
}

run_python() {  # a script of tools/device (or -, stdin) with qbench's environment, from $T/res
  environment
  local script=$1; shift
  [ "$script" != - ] && [ -f "$REPO/$script" ] && script=$REPO/$script
  local log
  log=$(log_file "${LOG:-$(basename "${script%.py}")}")
  (cd "$RES" && python3 "$script" "$@") 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

profile() {  # ncu over a script of tools/device: occupancy, waves, stalls, DRAM throughput of its GEMVs
  environment
  local tool script=$1; shift
  tool=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [ -n "$tool" ] || { echo "ncu: Nsight Compute is not on this machine" | tee -a "$OUT/ncu.txt"; return 3; }
  [ -f "$REPO/$script" ] && script=$REPO/$script
  local section sections=()
  for section in SpeedOfLight LaunchStats Occupancy WarpStateStats MemoryWorkloadAnalysis SchedulerStats; do
    sections+=(--section "$section")
  done
  (cd "$RES" && timeout -s INT "$(seconds_left)" "$tool" --kernel-name "regex:${NCU_KERNELS:-gemv}" "${sections[@]}" \
    python3 "$script" "$@") >> "$OUT/ncu.txt" 2>&1
  local rc=$?
  echo "ncu: rc $rc ($tool)" | tee -a "$OUT/ncu.txt"
  return $rc
}

command=${1:-}
[ $# -gt 0 ] && shift
case $command in
  setup) setup "$@" ;;
  wait-builds) wait_builds ;;
  compare) run_qbench compare "$@" ;;
  qbench) run_qbench "$@" ;;
  py) run_python "$@" ;;
  export) export_tables "$@" ;;
  probe) probe ;;
  ncu) profile "$@" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac

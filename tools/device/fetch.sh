#!/usr/bin/env bash
# Fetch what the device needs (run here, in the repo root, with PyPI reachable); tools/device/run.sh
# setup installs whatever of these packs a call carries. Each pack folder is ignored through
# .git/info/exclude.
#
#   fetch.sh            .whl/ (binary wheels) and .devsite/ (source pack of the sdist-only packages,
#                       pcre_shim.py as pcre, and a qbench wheel): every backend but llama.cpp
#   fetch.sh q [REQ...] .devq/: a qbench wheel (a warm machine, or bf16/torch-int4 only), with the
#                       binary wheels of REQ... beside it (formats8: nvidia-ml-py gemlite==0.6.0.post2 tqdm)
#   fetch.sh rep        .devrep/: nvidia-ml-py and a qbench wheel (bf16 cells: replicate, trust);
#                       OLD=<commit> adds .devrep/old/ with that commit's qbench wheel
#   fetch.sh llama      .devllama/: llama-cpp-python's slimmed sdist, the wheels its build and the
#                       GGUF reader need, and a qbench wheel
#
# REF=<commit> builds the qbench wheel from that commit instead of the working tree (to reproduce a
# result made with an older qbench: results/README.md names each one's commit).
set -euo pipefail
mode=${1:-full}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
binary() {  # folder, requirements... (a pure-Python one PyPI holds as an sdist alone, gemlite's 0.6.0.post2: its wheel built here)
  local folder=$1 requirement pure=(); shift
  local wanted=()
  for requirement in "$@"; do
    case $requirement in gemlite*) pure+=("$requirement") ;; *) wanted+=("$requirement") ;; esac
  done
  [ ${#wanted[@]} -eq 0 ] || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$folder" "${wanted[@]}"
  [ ${#pure[@]} -eq 0 ] || python3 -m pip wheel -q --no-deps -w "$folder" "${pure[@]}"
}
pack_folder() {
  local exclude
  exclude=$(git rev-parse --git-common-dir)/info/exclude
  grep -qx "/$1/" "$exclude" 2>/dev/null || echo "/$1/" >> "$exclude"
  mkdir -p "$1"
}
qbench_wheel() {  # folder [commit]
  local folder=$1 ref=${2:-} tree=.
  rm -f "$folder"/qbench*.whl
  if [ -n "$ref" ]; then
    tree=$(mktemp -d)
    git archive "$ref" | tar x -C "$tree"
  fi
  python3 -m pip wheel -q --no-deps -w "$folder" "$tree"
}

case $mode in
  full)
    pack_folder .whl; pack_folder .devsite
    binary .whl bitsandbytes==0.50.2 exllamav2==0.3.2 nvidia-ml-py torchao==0.18.0 datasets dill multiprocess \
      gemlite==0.6.0.post2 tqdm
    # bitsandbytes ships 15 GPU builds (43 MB); the device's torch is +cu130: keep that one and the CPU's
    python3 tools/device/slim_wheel.py .whl/bitsandbytes-*.whl cuda130 cpu
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" gptqmodel==7.6.0 device-smi tokenicer logbar defuser
    mkdir "$work/pack"
    for archive in "$work"/*.tar.gz; do tar xzf "$archive" -C "$work"; done
    for package in gptqmodel gptqmodel_ext device_smi tokenicer logbar defuser; do
      cp -r "$work"/*/"$package" "$work/pack/"
    done
    cp tools/device/pcre_shim.py "$work/pack/pcre.py"
    tar czf .devsite/srcpack.tar.gz -C "$work/pack" .
    qbench_wheel .devsite "${REF:-}"
    du -sh .whl .devsite ;;
  q)
    pack_folder .devq
    [ $# -gt 1 ] && binary .devq "${@:2}"
    qbench_wheel .devq "${REF:-}"
    du -sh .devq ;;
  rep)
    pack_folder .devrep
    binary .devrep nvidia-ml-py
    qbench_wheel .devrep "${REF:-}"
    if [ -n "${OLD:-}" ]; then mkdir -p .devrep/old && qbench_wheel .devrep/old "$OLD"; fi
    du -sh .devrep ;;
  llama)
    pack_folder .devllama
    binary .devllama scikit_build_core pathspec packaging diskcache gguf jinja2 markupsafe nvidia-ml-py
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" llama-cpp-python==0.3.36
    tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    source=$(ls -d "$work"/llama_cpp_python-*/)
    # what the CUDA build does not need: git folders, docs, vocab GGUFs, benches, the server's web UI, gguf-py
    find "$source" -name .git -prune -exec rm -rf {} +
    rm -rf "$source"/vendor/llama.cpp/{docs,models,gguf-py,benches} "$source"/vendor/llama.cpp/{examples,tools}/server/{public,webui}
    tar czf .devllama/lcp-slim.tar.gz -C "$work" "$(basename "$source")"
    qbench_wheel .devllama "${REF:-}"
    du -sh .devllama .devllama/lcp-slim.tar.gz ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac

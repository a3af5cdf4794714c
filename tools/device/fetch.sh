#!/usr/bin/env bash
# Fetch what the device needs (run in the repo root, with PyPI reachable).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devsite/' .git/info/exclude || echo '/.devsite/' >> .git/info/exclude
mkdir -p .whl .devsite
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl bitsandbytes==0.50.2 exllamav2==0.3.2 nvidia-ml-py torchao==0.18.0 datasets dill multiprocess
work=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" gptqmodel==7.6.0 device-smi tokenicer logbar defuser
mkdir "$work/pack"
for archive in "$work"/*.tar.gz; do tar xzf "$archive" -C "$work"; done
for package in gptqmodel gptqmodel_ext device_smi tokenicer logbar defuser; do
  cp -r "$work"/*/"$package" "$work/pack/"
done
cp tools/device/pcre_shim.py "$work/pack/pcre.py"
tar czf .devsite/srcpack.tar.gz -C "$work/pack" .
rm -f .devsite/qbench*.whl
python3 -m pip wheel -q --no-deps -w .devsite .
du -sh .whl .devsite

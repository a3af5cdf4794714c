"""Drop a binary wheel's shared libraries built for other CUDA/ROCm/XPU versions, so the packs fit the
device tool's 64 MiB carry (bitsandbytes 0.50.2 ships 15 builds, 43 MB; the device runs torch +cu130).

    python tools/device/slim_wheel.py WHEEL KEEP [KEEP ...]    # e.g. ... bitsandbytes-*.whl cuda130 cpu

Every `lib*_<tag>.so` whose tag is not kept leaves the archive and its RECORD line goes with it; the
rest is copied byte for byte, so pip installs the slim wheel as it would the full one."""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path


def main() -> None:
    wheel, keep = Path(sys.argv[1]), set(sys.argv[2:])
    tagged = re.compile(r"lib[a-z0-9_]+?_([a-z]+[0-9]*)\.(so|dll|dylib)$")

    def dropped(name: str) -> bool:
        found = tagged.search(name.rsplit("/", 1)[-1])
        return bool(found) and found.group(1) not in keep

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if dropped(item.filename):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
            out.writestr(item, data)
    before, after = wheel.stat().st_size, slim.stat().st_size
    slim.replace(wheel)
    print(f"{wheel.name}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB (kept {', '.join(sorted(keep))})")


if __name__ == "__main__":
    main()

"""Write qbench's shipped calibration (qbench/data/calibration-h100.json) from the committed store.

    python tools/calibration.py           # regenerate it (run from anywhere; paths are the repository's)
    python tools/calibration.py --check   # exit 1 if the shipped file differs from what the store gives

`qbench predict` without --db, and `qbench compare --gpu G` on a machine without G, predict from this
file; qbench.analysis.predict.calibration_document says what it holds. tests/test_headline.py checks that the
shipped file is exactly what this script makes from the committed store, so the two cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qbench.analysis.predict import SHIPPED_CALIBRATION, SHIPPED_STORE, calibration_document, document_text  # noqa: E402
from qbench.store import Store  # noqa: E402

SHIPPED = ROOT / "qbench" / "data" / SHIPPED_CALIBRATION


def build() -> str:
    """The shipped file's text, made from the committed store (read only)."""
    store = Store(ROOT / SHIPPED_STORE, readonly=True)
    try:
        sessions = store.sessions()
    finally:
        store.close()
    return document_text(calibration_document(sessions, SHIPPED_STORE))


def main(argv: list[str]) -> int:
    text = build()
    if argv[1:] == ["--check"]:
        same = SHIPPED.is_file() and SHIPPED.read_text() == text
        print(f"{SHIPPED.relative_to(ROOT)} {'matches' if same else 'DIFFERS from'} {SHIPPED_STORE}")
        return 0 if same else 1
    if argv[1:]:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    SHIPPED.write_text(text)
    print(f"wrote {SHIPPED.relative_to(ROOT)} from {SHIPPED_STORE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""FORMATS: every output format by the name `--format` takes. A new format is one module here with a
RENDERER (qbench.render.document.Renderer) and one line below; every table command offers it."""

from __future__ import annotations

from qbench.render.document import Renderer
from qbench.render.formats import csv, html, json, jsonl, latex, md, table

FORMATS: dict[str, Renderer] = {
    "table": table.RENDERER,
    "md": md.RENDERER,
    "csv": csv.RENDERER,
    "json": json.RENDERER,
    "jsonl": jsonl.RENDERER,
    "latex": latex.RENDERER,
    "html": html.RENDERER,
}


def renderer(fmt: str) -> Renderer:
    return FORMATS[fmt]

"""JSON Lines: one object a line: the document's data where it is a list, else its records."""

from __future__ import annotations

import json

from qbench.render.document import Document, Renderer, records_of


def render(document: Document, wide: bool = False) -> str:
    rows = document.data if isinstance(document.data, list) else records_of(document)
    return "\n".join(json.dumps(row) for row in rows)


RENDERER = Renderer(render, prose=False, full_values=True)

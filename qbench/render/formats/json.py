"""JSON: the document's data (default: its tables' rows as objects), indented."""

from __future__ import annotations

import json

from qbench.render.document import Document, Renderer, records_of


def render(document: Document, wide: bool = False) -> str:
    return json.dumps(document.data if document.data is not None else records_of(document), indent=2)


RENDERER = Renderer(render, prose=False, full_values=True)

"""A throwaway output format for tests/test_render.py: the terminal's text in capitals. It is the one
module a new format needs; the test adds its one line to FORMATS."""

from qbench.render.document import Document, Renderer
from qbench.render.formats import table


def render(document: Document, wide: bool = False) -> str:
    return table.render(document, wide).upper()


RENDERER = Renderer(render, compact=True, fit=True)

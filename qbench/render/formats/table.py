"""The terminal: plain text, tables fitted to TERMINAL_WIDTH (their widest cells wrapped) unless --wide,
prose wrapped at the same width."""

from __future__ import annotations

import textwrap

from qbench.render.document import Callout, Document, Gap, Heading, Legend, Prose, Renderer, Table, walk
from qbench.render.escape import for_terminal
from qbench.render.tables import TERMINAL_WIDTH, table_text

LEGEND_WIDTH = 100  # a legend people read: wrapped, not one long line


def wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        for_terminal(text), TERMINAL_WIDTH, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
    )


def legend_lines(text: str) -> list[str]:
    return textwrap.wrap(text, LEGEND_WIDTH, break_on_hyphens=False)


def render(document: Document, wide: bool = False) -> str:
    def block(one) -> list[str]:
        if isinstance(one, Heading):
            return wrap(one.text + (f" [{one.badge}]" if one.badge else ""))
        if isinstance(one, Prose) and not one.wrap:
            return [for_terminal(one.text)]
        if isinstance(one, Prose):
            return wrap((f"[{one.badge}] " if one.badge else "") + one.text, one.indent)
        if isinstance(one, Gap):
            return [""]
        if isinstance(one, Legend):
            return legend_lines(one.text)
        if isinstance(one, Table):
            return [table_text(one, for_terminal, "simple", fit=not wide)]
        if isinstance(one, Callout):
            return wrap(one.headline) + [line for item in one.items for line in wrap(f"- {item}", "  ")]
        raise TypeError(f"no terminal form for {type(one).__name__}")

    return "\n".join(walk(document, block))


RENDERER = Renderer(render, compact=True, fit=True)

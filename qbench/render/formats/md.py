"""Markdown (GitHub's tables): every name through markdown_prose or for_markdown."""

from __future__ import annotations

from qbench.render.document import Callout, Document, Gap, Heading, Legend, Prose, Renderer, Table, walk
from qbench.render.escape import for_markdown, markdown_prose
from qbench.render.formats.table import legend_lines
from qbench.render.tables import table_text


def render(document: Document, wide: bool = False) -> str:
    def block(one) -> list[str]:
        if isinstance(one, Heading):
            return ["#" * one.level + " " + markdown_prose(one.text) + (f" **[{one.badge}]**" if one.badge else "")]
        if isinstance(one, Prose):
            return [(f"**[{one.badge}]** " if one.badge else "") + markdown_prose(one.text)]
        if isinstance(one, Gap):
            return [""]
        if isinstance(one, Legend):
            return legend_lines(one.text)
        if isinstance(one, Table):
            return [table_text(one, for_markdown, "github")]
        if isinstance(one, Callout):
            return [f"**{markdown_prose(one.headline)}**", ""] + [f"- {markdown_prose(item)}" for item in one.items]
        raise TypeError(f"no Markdown form for {type(one).__name__}")

    return "\n".join(walk(document, block))


RENDERER = Renderer(render)

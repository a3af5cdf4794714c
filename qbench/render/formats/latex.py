"""LaTeX: booktabs tables, escaped prose; a fragment to \\input into a paper."""

from __future__ import annotations

from qbench.render.document import Callout, Document, Gap, Heading, Legend, Prose, Renderer, Table, walk
from qbench.render.escape import for_terminal, latex_prose
from qbench.render.tables import table_text


def render(document: Document, wide: bool = False) -> str:
    def block(one) -> list[str]:
        if isinstance(one, Heading):
            command = "section" if one.level <= 1 else "subsection"
            return [f"\\{command}*{{{latex_prose(one.text + (f' [{one.badge}]' if one.badge else ''))}}}"]
        if isinstance(one, Prose | Legend):
            return [latex_prose(one.text) + "\n"]  # a blank line ends a LaTeX paragraph
        if isinstance(one, Gap):
            return [""]
        if isinstance(one, Table):
            return [table_text(one, for_terminal, "latex_booktabs")]  # tabulate escapes the cells
        if isinstance(one, Callout):
            items = "".join(f"\\item {latex_prose(item)}\n" for item in one.items)
            return [f"\\textbf{{{latex_prose(one.headline)}}}\n\\begin{{itemize}}\n{items}\\end{{itemize}}\n"]
        raise TypeError(f"no LaTeX form for {type(one).__name__}")

    return "\n".join(walk(document, block))


RENDERER = Renderer(render, compact=True)

"""HTML: one whole, self-contained page (inline style, figures inline, nothing fetched)."""

from __future__ import annotations

import re

from qbench.render.document import Callout, Document, Figure, Gap, Heading, Legend, Prose, Renderer, Table, walk
from qbench.render.escape import for_html, for_terminal, html_prose
from qbench.render.tables import table_text

HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}"
    "table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:0 0.2em}"
)


def html_document(title: str, body: str, style: str = HTML_STYLE) -> str:
    """A whole, self-contained HTML document (inline style, nothing fetched)."""
    plain_title = re.sub(r"`([^`]+)`", r"\1", title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{for_html(plain_title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def badge(word: str) -> str:
    return f'<span class="badge {for_html(word)}">{for_html(word)}</span>' if word else ""


def render(document: Document, wide: bool = False) -> str:
    def block(one) -> list[str]:
        if isinstance(one, Heading):
            return [f"<h{one.level}>{for_html(one.text)}{badge(one.badge)}</h{one.level}>"]
        if isinstance(one, Prose):
            opening = '<p class="note">' if one.note else "<p>"
            return [opening + html_prose(one.text) + (" " + badge(one.badge) if one.badge else "") + "</p>"]
        if isinstance(one, Legend):
            return ["<p>" + html_prose(one.text) + "</p>"]
        if isinstance(one, Gap):
            return [""]
        if isinstance(one, Table):
            return [table_text(one, for_terminal, "html")]  # tabulate escapes the cells
        if isinstance(one, Callout):
            items = "".join(f"<li>{html_prose(item)}</li>" for item in one.items)
            css = "rec" if one.ok else "rec none"
            return [f'<div class="{css}"><h4>{html_prose(one.headline)}</h4><ul>{items}</ul></div>']
        if isinstance(one, Figure):
            return [
                f"<figure>{svg}<figcaption>{for_html(caption)}{badge(one.badge)}</figcaption></figure>"
                for svg, caption in one.drawings
            ]
        raise TypeError(f"no HTML form for {type(one).__name__}")

    body = "\n".join(walk(document, block, fallback=False, spaced=False))
    return html_document(document.title or "qbench", body, HTML_STYLE + (document.style or ""))


RENDERER = Renderer(render)

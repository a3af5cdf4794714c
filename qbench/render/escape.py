"""Names are data: how a value that came from outside (a model path, a backend's label or notes, a
kernel name, a failure's reason, a command line) becomes text in each output format without
becoming that format's markup, a spreadsheet formula or a terminal's escape sequence.

Every renderer calls these where a cell or a line becomes text in its format, and nowhere else:
  terminal  for_terminal: control characters shown as escapes (`\\x1b`), line breaks as spaces
  Markdown  for_markdown (a table cell), markdown_prose (a line with `code` in it)
  HTML      for_html (entities), html_prose (a line with `code` in it); tabulate's html table
            format escapes its cells itself
  LaTeX     for_latex; tabulate's latex_booktabs format escapes its cells' special characters itself
  CSV       for_csv: a leading ' before a cell a spreadsheet would run as a formula, controls out
  figures   for_plot: matplotlib's mathtext `$` escaped
JSON needs nothing: json.dumps escapes what JSON must.
"""

from __future__ import annotations

import html
import re

# C0 controls (ESC starts a terminal's escape sequences; a line break ends a table row), DEL, C1
# controls, and the bidirectional overrides that show text in another order than it is stored.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_WHITESPACE = "\t\n\r\x0b\x0c"


def _shown(match: re.Match) -> str:
    char = match.group()
    return " " if char in _WHITESPACE else char.encode("unicode_escape").decode("ascii")


def for_terminal(text: object) -> str:
    """One line of plain text: line breaks and tabs as spaces, every other control character as
    its escape, so nothing in a name can move the cursor, recolour or retitle a terminal."""
    return _CONTROL.sub(_shown, str(text))


# Markdown: entities for what would start HTML (a tag, an autolink) or an entity; a backslash before
# what would start a link or image ([ ]), emphasis, a code span, or end a table cell (|). A `>` is
# left as it is: without `<` it opens nothing, and no name starts a line (line breaks are spaces).
_MARKDOWN = {"&": "&amp;", "<": "&lt;", "|": "\\|"}
_MARKDOWN.update({char: "\\" + char for char in "\\`*[]"})


def for_markdown(text: object) -> str:
    """Text that a Markdown renderer shows as it is: no HTML, link, emphasis or code span comes
    out of it, and in a table it stays one cell of one row."""
    return re.sub(r"[&<\\`*\[\]|]", lambda m: _MARKDOWN[m.group()], for_terminal(text))


_CODE = re.compile(r"`([^`]+)`")


def markdown_prose(text: str) -> str:
    """A line of prose as Markdown: `code` in it stays a code span (whose content no Markdown
    renderer reads as markup), everything else as for_markdown."""
    parts = _CODE.split(for_terminal(text))
    return "".join(f"`{part}`" if index % 2 else for_markdown(part) for index, part in enumerate(parts))


def for_html(text: object) -> str:
    return html.escape(for_terminal(text))


def html_prose(text: str) -> str:
    """Prose as HTML: escaped, with `code` in the text as <code>code</code>."""
    return _CODE.sub(r"<code>\1</code>", for_html(text))


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def for_latex(text: object) -> str:
    """Text LaTeX typesets as it is: its special characters escaped, control characters (which
    stop pdflatex) shown as escapes, line breaks (a blank line ends a paragraph) as spaces."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX[m.group()], for_terminal(text))


def latex_prose(text: str) -> str:
    """Prose as LaTeX: escaped, with `code` in the text as \\texttt{code} (no Markdown backticks)."""
    return _CODE.sub(lambda m: r"\texttt{" + m.group(1) + "}", for_latex(text))


def for_plot(text: object) -> str:
    """A label matplotlib draws as it is: a `$` would start mathtext (and a bad formula stops the
    figure), so it is escaped; control characters as for_terminal."""
    return for_terminal(text).replace("$", r"\$")


# OWASP, CSV injection: a cell starting with one of these is a formula to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def for_csv(value: object) -> object:
    """A CSV cell a spreadsheet shows rather than runs: a text starting like a formula (after any
    spaces) gets a leading ' (numbers, negative ones included, stay numbers); control characters as
    for_terminal, since a CSV export is printed too."""
    if not isinstance(value, str):
        return value
    text = for_terminal(value)
    if text.lstrip().startswith(_FORMULA_START) and not _NUMBER.fullmatch(text.strip()):
        return "'" + text
    return text


def cells(body: list[list], escape) -> list[list]:
    """A table's text cells through one format's `escape`, before tabulate lays the table out (which
    escapes LaTeX's and HTML's special characters in cells itself): numbers stay numbers, for tabulate
    to align."""
    return [[escape(value) if isinstance(value, str) else value for value in row] for row in body]

"""What a command prints, before it is text: a Document of blocks (headings, prose, tables with typed
columns, figures), and the Renderer each output format registers in qbench.render.formats.FORMATS.

A command builds one Document and hands it to FORMATS[fmt].render; the renderers alone turn names into
their format's text (qbench.render.escape). A builder may ask a renderer's traits (does it show the
compact column set, does it fit the terminal, does it carry prose) but never its name, so a new format
is one module and one line in FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Column:
    name: str
    kind: str = "auto"  # "auto": a cell that reads as a number is aligned as one; "text": shown as it is


@dataclass
class Table:
    columns: list[Column]
    rows: list[list]

    @classmethod
    def of(cls, headers: list[str], rows: list[list], kind: str = "auto") -> Table:
        return cls([Column(name, kind) for name in headers], rows)

    @property
    def headers(self) -> list[str]:
        return [column.name for column in self.columns]


@dataclass
class Heading:
    text: str
    level: int = 3
    badge: str = ""  # a word the heading carries as a marker ("measured")


@dataclass
class Prose:
    """One paragraph. `code` in backticks stays code; in the terminal it wraps, later lines indented."""

    text: str
    indent: str = "    "
    note: bool = False  # a side note (smaller in HTML)
    badge: str = ""
    wrap: bool = True  # False: one line whatever its length (a command to copy)


@dataclass
class Gap:
    """A blank line where the formats made of lines have one."""


@dataclass
class Legend:
    """The closing explanation of a table's columns (our own words): wrapped for people to read."""

    text: str


@dataclass
class Callout:
    """A headline and its reasons, set apart (a recommendation); `ok` False: a negative answer."""

    headline: str
    items: list[str]
    ok: bool = True


@dataclass
class Figure:
    """Drawings (SVG, caption) where the format can show them; elsewhere the `fallback` blocks (its data)."""

    drawings: list[tuple[str, str]]
    fallback: list[Any] = field(default_factory=list)
    badge: str = ""


@dataclass
class Document:
    title: str
    blocks: list[Any] = field(default_factory=list)
    data: Any = None  # what JSON carries (default: the tables as lists of objects)
    records: list[dict] | None = None  # what CSV and JSON Lines carry, one flat object a row (default: tables)
    spaced: bool = False  # a blank line after every block in the formats made of lines
    style: str | None = None  # extra CSS for HTML

    def tables(self) -> list[Table]:
        found = []
        for block in self.blocks:
            if isinstance(block, Table):
                found.append(block)
            elif isinstance(block, Figure):
                found += [b for b in block.fallback if isinstance(b, Table)]
        return found


@dataclass(frozen=True)
class Renderer:
    """One output format: `render(document, wide)` -> text, and the traits builders may ask."""

    render: Callable[[Document, bool], str]
    compact: bool = False  # shows a table's compact column set unless --wide (terminal, LaTeX)
    fit: bool = False  # fits the terminal's width unless --wide
    prose: bool = True  # carries titles, notes and legends (CSV and JSON carry data only)
    full_values: bool = False  # cells at full length (a kernel's whole name), for machines


def walk(
    document: Document, render_block: Callable[[Any], list[str]], fallback: bool = True, spaced: bool | None = None
) -> list[str]:
    """The document's lines: each block's, a figure's fallback blocks in its place where `fallback`,
    and in a spaced document a blank line after each block that printed something."""
    lines: list[str] = []
    for block in document.blocks:
        inner = block.fallback if fallback and isinstance(block, Figure) else [block]
        for one in inner:
            out = render_block(one)
            lines += out
            if (document.spaced if spaced is None else spaced) and out:
                lines.append("")
    return lines


def records_of(document: Document) -> list[dict]:
    """The rows a machine format writes: the document's records, else every table's rows as objects."""
    if document.records is not None:
        return document.records
    return [dict(zip(table.headers, row, strict=False)) for table in document.tables() for row in table.rows]

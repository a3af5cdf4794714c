"""Lay out one table of text (tabulate): numbers keep the decimals they were formatted with, and a
terminal table fits TERMINAL_WIDTH columns by wrapping its widest cells (every column kept).

tabulate reads a cell like "85.0" as a number and prints it with the "g" format ("85"), so each
column's float format is taken from the decimals its cells were given (the widest), and whole
numbers stay whole.
"""

from __future__ import annotations

import re

from tabulate import tabulate

TERMINAL_WIDTH = 120
MIN_WRAPPED = 8  # no column is wrapped narrower than this
MAX_FLOAT_DECIMALS = 2  # a float handed over unformatted (80.0 GiB) prints at most this many
HEADER_PADDING = 2  # tabulate's MIN_PADDING: a column is at least its header and two more
SEPARATOR = 2  # tabulate's "simple" format puts two spaces between columns
_NUMBER = re.compile(r"^[+-]?\d+(?:\.(\d+))?$")


def _decimals(value: object) -> int | None:
    """The decimals a numeric cell was given (a float: its own, at most MAX_FLOAT_DECIMALS); None
    for a cell that is no number."""
    if isinstance(value, bool) or not isinstance(value, str | float | int):
        return None
    if isinstance(value, float):
        text = repr(value)
        if not _NUMBER.match(text):
            return None  # nan, inf, 1e-07
        return min(len(text.partition(".")[2]), MAX_FLOAT_DECIMALS)
    match = _NUMBER.match(str(value).strip())
    return len(match.group(1) or "") if match else None


def _float_formats(body: list[list]) -> list[str]:
    """Per column, "f" with as many decimals as its most precise numeric cell; "g" where none."""
    columns = max((len(cells) for cells in body), default=0)
    formats = []
    for index in range(columns):
        decimals = [d for cells in body if index < len(cells) for d in [_decimals(cells[index])] if d is not None]
        formats.append(f".{max(decimals)}f" if decimals else "g")
    return formats


def _text_width(value: object) -> int:
    return max((len(line) for line in str(value).splitlines()), default=0)


def _longest_word(value: object) -> int:
    return max((len(word) for word in str(value).split()), default=0)


def fit_widths(headers: list[str], body: list[list], width: int = TERMINAL_WIDTH) -> list[int | None] | None:
    """The widest each column may be for the table to fit `width` (None: as wide as it is): the
    widest column gives a character at a time, first down to its longest word (words stay whole),
    then, where that is not enough, down to MIN_WRAPPED. None where it fits as it is."""
    widths = [_text_width(h) + HEADER_PADDING for h in headers]
    words = [_longest_word(h) + HEADER_PADDING for h in headers]
    for cells in body:
        for index, value in enumerate(cells[: len(widths)]):
            widths[index] = max(widths[index], _text_width(value))
            words[index] = max(words[index], _longest_word(value))
    caps = list(widths)
    total = sum(caps) + SEPARATOR * (len(caps) - 1)
    if total <= width:
        return None
    for floors in ([max(w, MIN_WRAPPED) for w in words], [MIN_WRAPPED] * len(caps)):
        while total > width:
            shrinkable = [i for i in range(len(caps)) if caps[i] > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: caps[i])
            caps[widest] -= 1
            total -= 1
    return [cap if cap < natural else None for cap, natural in zip(caps, widths, strict=True)]


def layout(body: list[list], headers: list[str], tablefmt: str, fit: bool = False, text: list[int] = ()) -> str:
    """The table as text; `fit` (a terminal table without --wide): wrapped to TERMINAL_WIDTH; the
    columns numbered in `text` are shown as they are, never read as numbers."""
    floatfmt = _float_formats(body) or "g"
    numparse = {} if not text else {"disable_numparse": True if len(text) == len(headers) else list(text)}
    caps = fit_widths(headers, body) if fit else None
    if caps is None:
        return tabulate(body, headers=headers, tablefmt=tablefmt, floatfmt=floatfmt, **numparse)
    header_caps = [None if cap is None else max(cap - HEADER_PADDING, 1) for cap in caps]
    return tabulate(
        body,
        headers=headers,
        tablefmt=tablefmt,
        floatfmt=floatfmt,
        maxcolwidths=caps,
        maxheadercolwidths=header_caps,
        **numparse,
    )


def table_text(table, escape, tablefmt: str, fit: bool = False) -> str:
    """A qbench.render.document.Table laid out in `tablefmt`, its text cells through `escape`."""
    from qbench.render.escape import cells

    text = [index for index, column in enumerate(table.columns) if column.kind == "text"]
    return layout(cells(table.rows, escape), table.headers, tablefmt, fit=fit, text=text)

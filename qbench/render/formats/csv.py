"""CSV: the data alone (no title, prose or figure), every text cell through for_csv."""

from __future__ import annotations

import csv
import io

from qbench.render.document import Document, Renderer
from qbench.render.escape import cells, for_csv


def render(document: Document, wide: bool = False) -> str:
    buffer = io.StringIO()
    if document.records is not None:
        fields = list(dict.fromkeys(key for record in document.records for key in record))
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for record in document.records:
            writer.writerow({key: for_csv(record.get(key)) for key in fields})
        return buffer.getvalue()
    for table in document.tables():
        csv.writer(buffer).writerows([table.headers, *cells(table.rows, for_csv)])
    return buffer.getvalue()


RENDERER = Renderer(render, prose=False, full_values=True)

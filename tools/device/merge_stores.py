"""Merge the runs and sessions of one qbench store into another (both written by one qbench schema).

    python tools/device/merge_stores.py INTO.sqlite FROM.sqlite

For a run resumed on a second machine whose carried store did not arrive, so that the resumed run
began a store of its own: FROM's runs, sessions (renumbered) and reused-session links are added to
INTO in one transaction; a run id INTO already holds is refused. Nothing is re-keyed: each session
keeps its cell hash, configuration, result and provenance (GPU UUID included), so the export and
the report pool exactly what qbench itself would have pooled had the store arrived."""

from __future__ import annotations

import sqlite3
import sys


def main() -> None:
    into, source = sys.argv[1:3]
    db = sqlite3.connect(into)
    db.execute("ATTACH DATABASE ? AS src", (source,))
    ours = dict(db.execute("SELECT key, value FROM main.meta"))
    theirs = dict(db.execute("SELECT key, value FROM src.meta"))
    if ours != theirs:
        sys.exit(f"the stores' meta differ: {ours} vs {theirs}")
    clash = [r for (r,) in db.execute("SELECT run_id FROM src.runs WHERE run_id IN (SELECT run_id FROM main.runs)")]
    if clash:
        sys.exit(f"{into} already holds run(s) {', '.join(clash)}")
    with db:
        db.execute("INSERT INTO main.runs SELECT * FROM src.runs")
        renumbered = {}
        columns = (
            "run_id, cell_hash, model, gpu, backend, ctx, session_index, status, reason, config_json, result_json, "
            "created_at"
        )
        for (old, *row) in db.execute(f"SELECT id, {columns} FROM src.sessions ORDER BY id").fetchall():
            cursor = db.execute(f"INSERT INTO main.sessions ({columns}) VALUES ({', '.join('?' * len(row))})", row)
            renumbered[old] = cursor.lastrowid
        for run_id, session in db.execute("SELECT run_id, session_id FROM src.run_reused").fetchall():
            db.execute("INSERT INTO main.run_reused VALUES (?, ?)", (run_id, renumbered[session]))
    runs = db.execute("SELECT count(*) FROM src.runs").fetchone()[0]
    print(f"{into}: added {runs} run(s) and {len(renumbered)} session(s) from {source}")


if __name__ == "__main__":
    main()

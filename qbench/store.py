"""Results live in SQLite (WAL): one row per session, with its full configuration and provenance.

Exports read from here; nothing is recomputed from memory. The schema carries a version so that a
later qbench can refuse, or migrate, a database it does not understand.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qbench.errors import UserError

SCHEMA_VERSION = 1
DEFAULT_DB = Path("results") / "qbench.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, command TEXT NOT NULL, config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    cell_hash TEXT NOT NULL,
    model TEXT NOT NULL, gpu TEXT NOT NULL, backend TEXT NOT NULL, ctx INTEGER NOT NULL,
    session_index INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL,
    config_json TEXT NOT NULL, result_json TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_run ON sessions(run_id);
CREATE INDEX IF NOT EXISTS sessions_by_cell ON sessions(cell_hash);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, path: Path | str = DEFAULT_DB):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.commit()
        elif int(row[0]) != SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has schema version {row[0]}, this qbench reads {SCHEMA_VERSION}",
                "use another --db or a matching qbench",
            )

    def close(self) -> None:
        self.db.close()

    def new_run(self, command: str, config: dict[str, Any]) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (run_id, now(), command, json.dumps(config)))
        self.db.commit()
        return run_id

    def add_session(self, run_id: str, cell_hash: str, config: dict, gpu: str, result: dict) -> None:
        self.db.execute(
            "INSERT INTO sessions (run_id, cell_hash, model, gpu, backend, ctx, session_index, status, reason,"
            " config_json, result_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                cell_hash,
                config["model"],
                gpu,
                config["backend"],
                config["ctx"],
                config["session_index"],
                result["status"],
                result.get("reason", ""),
                json.dumps(config),
                json.dumps(result),
                now(),
            ),
        )
        self.db.commit()

    def completed_sessions(self, cell_hash: str) -> int:
        """Sessions of this exact configuration already stored with a result (for resuming)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM sessions WHERE cell_hash = ? AND status NOT IN ('timeout', 'crashed')", (cell_hash,)
        ).fetchone()
        return int(row[0])

    def commands(self, run_ids: list[str]) -> list[tuple[str, str]]:
        rows = self.db.execute(
            f"SELECT run_id, command FROM runs WHERE run_id IN ({','.join('?' * len(run_ids))}) ORDER BY created_at",
            run_ids,
        )
        return [(run, command) for run, command in rows]

    def run_ids(self) -> list[str]:
        """Runs that stored at least one session (a re-run that skipped every cell stored nothing)."""
        query = "SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM sessions) ORDER BY created_at, run_id"
        return [r[0] for r in self.db.execute(query)]

    def sessions(self, run_ids: list[str] | None = None, cell_hashes: list[str] | None = None) -> list[dict]:
        query = "SELECT config_json, result_json, gpu, run_id, cell_hash FROM sessions"
        clauses, args = [], []
        if run_ids is not None:
            clauses.append(f"run_id IN ({','.join('?' * len(run_ids))})")
            args += run_ids
        if cell_hashes is not None:
            clauses.append(f"cell_hash IN ({','.join('?' * len(cell_hashes))})")
            args += cell_hashes
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self.db.execute(query + " ORDER BY id", args).fetchall()
        return [
            {"config": json.loads(c), "result": json.loads(r), "gpu": g, "run_id": run, "cell_hash": h}
            for c, r, g, run, h in rows
        ]

"""Results live in SQLite (WAL): one row per session, with its full configuration and provenance.

Exports read from here; nothing is recomputed from memory. The schema carries a version so that a
later qbench can refuse, or migrate, a database it does not understand. A store opened read-only
(`export`, `plot`) never writes a byte: not to a qbench store, not to any other file it is given.

A run is one command. Its sessions are the ones it measured, plus, with `--resume`, the stored
sessions it counted instead of measuring again (table `run_reused`): exporting a resumed run shows
the whole plan, not only the sessions that happened to run last.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qbench.errors import UserError

SCHEMA_VERSION = 2
DEFAULT_DB = Path("results") / "qbench.sqlite"
SQLITE_MAGIC = b"SQLite format 3\x00"

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
CREATE TABLE IF NOT EXISTS run_reused (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    PRIMARY KEY (run_id, session_id)
);
"""
QBENCH_TABLES = {"meta", "runs", "sessions", "run_reused", "sqlite_sequence"}
# Sessions that produced a result (a timeout or crash is kept, but does not count as done).
COMPLETED = "status NOT IN ('timeout', 'crashed', 'interrupted')"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_is_sqlite(path: Path) -> None:
    """Refuse a file that is not SQLite before sqlite3 touches it."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}", "pass another --db") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(f"{path} is not a SQLite database", "pass --db a qbench results file (.sqlite)")


class Store:
    """A qbench results database. `readonly=True` opens an existing store without writing anything."""

    def __init__(self, path: Path | str = DEFAULT_DB, readonly: bool = False):
        from qbench.specs import check_path

        check_path("--db", path)  # a name the system refuses (too long) is one line, not an OSError
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._open_readonly()
        else:
            self._open_for_writing()

    # ---- opening ----------------------------------------------------------------------------
    def _open_readonly(self) -> None:
        if not self.path.is_file():
            raise UserError(f"no results database at {self.path}", "run `qbench compare` first or pass --db")
        _check_is_sqlite(self.path)
        if self.path.stat().st_size == 0:
            raise UserError(f"{self.path} is empty, not a qbench results database", "pass another --db")
        uri = self.path.resolve().as_uri()
        # With no -wal file beside it, every committed row is in the file itself: read it as an
        # immutable file, which creates no -shm/-wal files (and works on a read-only mount). With one
        # (a run is writing right now), read through the WAL so its latest sessions are seen.
        live = Path(f"{self.path}-wal").exists()
        try:
            try:
                self.db = sqlite3.connect(f"{uri}?mode=ro" + ("" if live else "&immutable=1"), uri=True)
                tables = self._tables()
            except sqlite3.OperationalError:
                if not live:
                    raise
                # A WAL database on a read-only mount cannot create its -shm file: read the file as it is.
                self.db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
                tables = self._tables()
        except sqlite3.DatabaseError as error:
            raise UserError(f"{self.path} is not a readable SQLite database ({error})", "pass another --db") from None
        if "meta" not in tables or "sessions" not in tables:
            self.db.close()
            raise UserError(f"{self.path} is a SQLite database but not a qbench results store", "pass another --db")
        self._check_version(self._version())

    def _open_for_writing(self) -> None:
        if self.path.exists():
            if self.path.is_dir():
                raise UserError(f"--db {self.path} is a folder", "pass a file path such as results/qbench.sqlite")
            _check_is_sqlite(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path))
            tables = self._tables()
            foreign = tables - QBENCH_TABLES
            if foreign or (tables and "meta" not in tables):
                self.db.close()
                raise UserError(
                    f"{self.path} is another program's SQLite database (tables: {', '.join(sorted(tables)[:5])})",
                    "pass --db a new file or a qbench results file",
                )
            version = self._version() if "meta" in tables else None
            if version is not None and version > SCHEMA_VERSION:
                self._check_version(version)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)  # also brings a version-1 store up to version 2 (one new table)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.commit()
        except (sqlite3.OperationalError, OSError) as error:
            raise UserError(f"cannot write results to {self.path}: {error}", "pass a writable --db path") from None
        except sqlite3.DatabaseError as error:
            raise UserError(f"{self.path} is not a usable SQLite database: {error}", "pass another --db") from None

    def _tables(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _version(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _check_version(self, version: int | None) -> None:
        if version not in (1, SCHEMA_VERSION):
            raise UserError(
                f"{self.path} has schema version {version}, this qbench reads 1 and {SCHEMA_VERSION}",
                "use another --db or a matching qbench",
            )

    def close(self) -> None:
        self.db.close()

    # ---- writing ----------------------------------------------------------------------------
    def new_run(self, command: str, config: dict[str, Any]) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (run_id, now(), command, json.dumps(config)))
        self.db.commit()
        return run_id

    def add_session(self, run_id: str, cell_hash: str, config: dict, gpu: str, result: dict) -> int:
        cursor = self.db.execute(
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
        return int(cursor.lastrowid)

    def add_reused(self, run_id: str, session_ids: list[int]) -> None:
        """Record stored sessions that this run counted instead of measuring again (--resume)."""
        self.db.executemany("INSERT OR IGNORE INTO run_reused VALUES (?, ?)", [(run_id, i) for i in session_ids])
        self.db.commit()

    # ---- reading ----------------------------------------------------------------------------
    def completed_session_ids(self, cell_hash: str) -> list[int]:
        """Ids of the sessions of this exact configuration stored with a result, oldest first."""
        rows = self.db.execute(f"SELECT id FROM sessions WHERE cell_hash = ? AND {COMPLETED} ORDER BY id", (cell_hash,))
        return [int(r[0]) for r in rows]

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

    def select_runs(self, run: str) -> list[str] | None:
        """The runs `run` names: 'all', 'latest' or one run id; None where this store holds no run of
        that id (an empty list where it holds no runs at all)."""
        runs = self.run_ids()
        if run == "all":
            return runs
        if run == "latest":
            return runs[-1:]
        return [run] if run in runs else None

    def _has_reused_table(self) -> bool:
        return "run_reused" in self._tables()

    def sessions(self, run_ids: list[str] | None = None, session_ids: list[int] | None = None) -> list[dict]:
        """Sessions of the given runs (measured by them, or reused by them with --resume), or by id."""
        query = "SELECT id, config_json, result_json, gpu, run_id, cell_hash FROM sessions"
        clauses, args = [], []
        if run_ids is not None:
            marks = ",".join("?" * len(run_ids))
            clause = f"run_id IN ({marks})"
            args += run_ids
            if self._has_reused_table():
                clause += f" OR id IN (SELECT session_id FROM run_reused WHERE run_id IN ({marks}))"
                args += run_ids
            clauses.append(f"({clause})")
        if session_ids is not None:
            clauses.append(f"id IN ({','.join('?' * len(session_ids))})")
            args += session_ids
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self.db.execute(query + " ORDER BY id", args).fetchall()
        return [
            {"id": i, "config": json.loads(c), "result": json.loads(r), "gpu": g, "run_id": run, "cell_hash": h}
            for i, c, r, g, run, h in rows
        ]

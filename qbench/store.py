"""Results live in SQLite (WAL): one row per session, with its full configuration and provenance.

Exports read from here; nothing is recomputed from memory. The schema carries a version so that a
later qbench can refuse, or migrate, a database it does not understand. A store opened read-only
(`export`, `plot`) never writes a byte: not to a qbench store, not to any other file it is given.

A run is one command. Its sessions are the ones it measured, plus, with `--resume`, the stored
sessions it counted instead of measuring again (table `run_reused`): exporting a resumed run shows
the whole plan, not only the sessions that happened to run last.

A row that cannot be read back (a flipped byte: text that is not UTF-8, JSON that does not parse) is
left out of every reader with a note naming its session, never the end of the whole store. A session
whose result could not be stored (a full disk) is kept as a file in `<store>.pending/` until
`--resume` stores it. No output file is ever written onto a store (`check_output`), and every output
file is written whole (`write_output`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qbench.errors import UserError
from qbench.records import SessionConfig, SessionResult, migrate

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
# Sessions --resume counts as done: a measurement (ok) or the gate's verdict on one (incorrect). Every
# other status says what the machine did at the time (failed, crashed, timeout, interrupted, oom,
# unavailable: a missing package, another process's memory, a full or read-only disk) and runs again.
COMPLETED = "status IN ('ok', 'incorrect')"
SIDE_FILES = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a store
# A session row as every reader takes it: text columns as bytes, decoded (and checked) in Python, so
# that one damaged row is left out instead of ending the whole query.
SESSION_COLUMNS = (
    "id, CAST(config_json AS BLOB), CAST(result_json AS BLOB), CAST(gpu AS BLOB), CAST(run_id AS BLOB),"
    " CAST(cell_hash AS BLOB)"
)
ROW_TEXTS = ("config_json", "result_json", "gpu", "run_id", "cell_hash")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _text(name: str, column: Any) -> str:
    try:
        return bytes(column).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise ValueError(f"its {name} is not UTF-8 text") from None


def _json_object(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"its {name} does not parse ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"its {name} is not a JSON object")
    return value


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
        self.noted: set[int] = set()  # damaged sessions already named on stderr
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
        self._copy: str | None = None
        if live and not Path(f"{self.path}-shm").exists():
            # A -wal with no -shm: a writer that never closed (killed) left sessions in the -wal only.
            # SQLite would create the -shm beside the store to read them: read a private copy instead.
            uri = self._private_copy()
        try:
            try:
                self.db = sqlite3.connect(
                    uri if self._copy else f"{uri}?mode=ro" + ("" if live else "&immutable=1"), uri=True
                )
                tables = self._tables()
            except sqlite3.OperationalError:
                if not live or self._copy:
                    raise
                # A WAL database on a read-only mount cannot create its -shm file: read the file as it is.
                self.db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
                tables = self._tables()
        except sqlite3.DatabaseError as error:
            self._drop_copy()
            raise UserError(f"{self.path} is not a readable SQLite database ({error})", "pass another --db") from None
        if "meta" not in tables or "sessions" not in tables:
            self.close()
            raise UserError(f"{self.path} is a SQLite database but not a qbench results store", "pass another --db")
        try:
            self._check_version(self._version())
        except UserError:
            self.close()
            raise

    def _private_copy(self) -> str:
        """The URI of a copy of the store and its -wal in a folder of qbench's own (removed on close)."""
        self._copy = tempfile.mkdtemp(prefix="qbench-read-")
        copy = Path(self._copy) / "store.sqlite"
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(f"{self.path}-wal", f"{copy}-wal")
        except OSError as error:
            self._drop_copy()
            raise UserError(f"cannot read {self.path} and its -wal: {error.strerror}", "pass another --db") from None
        return copy.as_uri() + "?mode=ro"

    def _drop_copy(self) -> None:
        if getattr(self, "_copy", None):
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

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
            if "meta" in tables:  # a store already: one this qbench reads, never one re-stamped blindly
                try:
                    self._check_version(self._version())
                except UserError:
                    self.db.close()
                    raise
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
        """The stored schema version; None where the meta table has none (or not a number)."""
        row = self.db.execute("SELECT CAST(value AS BLOB) FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return None if row is None else int(bytes(row[0]).decode())
        except (TypeError, ValueError):
            return None

    def _check_version(self, version: int | None) -> None:
        if version is None:
            raise UserError(
                f"{self.path} has no schema version (its meta table does not say which qbench wrote it)",
                "pass --db a new file; qbench never guesses what an unversioned store holds",
            )
        if version not in (1, SCHEMA_VERSION):
            raise UserError(
                f"{self.path} has schema version {version}, this qbench reads 1 and {SCHEMA_VERSION}",
                "use another --db or a matching qbench",
            )

    def close(self) -> None:
        self.db.close()
        self._drop_copy()

    # ---- writing ----------------------------------------------------------------------------
    def new_run(self, command: str, config: dict[str, Any]) -> str:
        run_id = new_run_id()
        self.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (run_id, now(), command, json.dumps(config)))
        self.db.commit()
        return run_id

    def add_session(
        self,
        run_id: str,
        cell_hash: str,
        config: SessionConfig | dict,
        gpu: str,
        result: SessionResult | dict,
        created_at: str | None = None,
    ) -> int:
        """Store one session: its records' JSON, stamped with their schema version (qbench.records)."""
        config = config if isinstance(config, SessionConfig) else SessionConfig.from_dict(config)
        result = result if isinstance(result, SessionResult) else SessionResult.from_dict(result)
        cursor = self.db.execute(
            "INSERT INTO sessions (run_id, cell_hash, model, gpu, backend, ctx, session_index, status, reason,"
            " config_json, result_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                cell_hash,
                config.model,
                gpu,
                config.backend,
                config.ctx,
                config.session_index,
                result.status,
                result.reason,
                config.to_json(),
                result.to_json(),
                created_at or now(),
            ),
        )
        self.db.commit()
        return int(cursor.lastrowid)

    def add_reused(self, run_id: str, session_ids: list[int]) -> None:
        """Record stored sessions that this run counted instead of measuring again (--resume)."""
        self.db.executemany("INSERT OR IGNORE INTO run_reused VALUES (?, ?)", [(run_id, i) for i in session_ids])
        self.db.commit()

    # ---- a session kept while the store could not take it ---------------------------------------
    @property
    def pending_dir(self) -> Path:
        return Path(f"{self.path}.pending")

    def keep_pending(
        self, run: dict, cell_hash: str, config: SessionConfig | dict, gpu: str, result: SessionResult | dict
    ) -> Path:
        """Write a session this store could not take (a full disk) to `<store>.pending/`, whole, for
        `store_pending` to store later. `run`: run_id, created_at, command and config of its run.
        Raises OSError where that cannot be written either."""
        self.pending_dir.mkdir(exist_ok=True)
        config = config.to_dict() if isinstance(config, SessionConfig) else config
        result = result.to_dict() if isinstance(result, SessionResult) else result
        record = {"run": run, "cell_hash": cell_hash, "config": config, "gpu": gpu, "result": result}
        record["created_at"] = now()
        path = self.pending_dir / f"session-{uuid.uuid4().hex[:12]}.json"
        from qbench.model.cache import write_whole

        write_whole(path, lambda temporary: temporary.write_text(json.dumps(record)))
        return path

    def store_pending(self) -> int:
        """Store the sessions kept in `<store>.pending/` (each once) and remove their files; returns how
        many. A file that does not read back is named on stderr and left where it is."""
        folder = self.pending_dir
        if folder.is_symlink() or not folder.is_dir():
            return 0
        stored = 0
        for path in sorted(folder.glob("session-*.json")):
            if path.is_symlink() or not path.is_file():
                continue
            try:
                record = json.loads(path.read_text())
                run, config = record["run"], record["config"]
                key = (run["run_id"], record["cell_hash"], config["session_index"], record["created_at"])
                self.db.execute(
                    "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?)",
                    (run["run_id"], run["created_at"], run["command"], json.dumps(run["config"])),
                )
                same = "run_id = ? AND cell_hash = ? AND session_index = ? AND created_at = ?"
                there = self.db.execute(f"SELECT 1 FROM sessions WHERE {same}", key).fetchone()
                if there is None:  # not stored already by a --resume that stopped before removing the file
                    self.add_session(
                        run["run_id"], record["cell_hash"], config, record["gpu"], record["result"], key[3]
                    )
                self.db.commit()
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.db.rollback()
                print(f"note: {path} could not be stored ({error}); it stays there", file=sys.stderr)
                continue
            path.unlink()
            stored += 1
        try:
            folder.rmdir()  # only where it is empty now
        except OSError:
            pass
        return stored

    # ---- reading ----------------------------------------------------------------------------
    def _record(self, row: tuple) -> dict | None:
        """A session row (SESSION_COLUMNS) as a dict, its config and result migrated to this qbench's
        records (qbench.records.migrate) and given as stored (`to_dict`); None, named once on stderr,
        where it is damaged or does not read as records."""
        session_id, *columns = row
        try:
            config, result, gpu, run_id, cell = (_text(n, c) for n, c in zip(ROW_TEXTS, columns, strict=True))
            config, result = _json_object("config_json", config), _json_object("result_json", result)
            config, result = migrate(config, result)
        except (ValueError, TypeError) as why:
            if session_id not in self.noted:
                self.noted.add(session_id)
                print(f"note: {self.path}: session {session_id} is damaged ({why}); left out", file=sys.stderr)
            return None
        return {
            "id": session_id,
            "config": config.to_dict(),
            "result": result.to_dict(),
            "gpu": gpu,
            "run_id": run_id,
            "cell_hash": cell,
        }

    def records(self, run_ids: list[str] | None = None) -> list[tuple[int, SessionConfig, SessionResult]]:
        """The sessions of `sessions(run_ids)` as typed records: (id, config, result)."""
        rows = self.sessions(run_ids)
        return [(r["id"], SessionConfig.from_dict(r["config"]), SessionResult.from_dict(r["result"])) for r in rows]

    def completed_session_ids(self, cell_hash: str) -> list[int]:
        """Ids of the sessions of this exact configuration stored done (COMPLETED) and readable, oldest
        first: a damaged row runs again."""
        query = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE cell_hash = ? AND {COMPLETED} ORDER BY id"
        return [int(row[0]) for row in self.db.execute(query, (cell_hash,)) if self._record(row) is not None]

    def commands(self, run_ids: list[str]) -> list[tuple[str, str]]:
        rows = self.db.execute(
            f"SELECT run_id, CAST(command AS BLOB) FROM runs WHERE run_id IN ({','.join('?' * len(run_ids))})"
            " ORDER BY created_at",
            run_ids,
        )
        return [(run, bytes(command).decode("utf-8", "replace")) for run, command in rows]  # a title only

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
        query = f"SELECT {SESSION_COLUMNS} FROM sessions"
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
        return [record for record in map(self._record, rows) if record is not None]


# ---- what the read commands read (export, plot, predict) -----------------------------------------
def stored_sessions(db: str, run_id: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """The sessions of the selected runs ('latest', 'all' or an id) and those runs' commands."""
    store = Store(db, readonly=True)
    try:
        runs = store.run_ids()
        if not runs:
            raise UserError(f"{db} holds no runs", "run `qbench compare` first")
        selected = store.select_runs(run_id)
        if selected is None:
            raise UserError(f"no run {run_id!r} in {db}", f"runs: {', '.join(runs[-5:])}")
        return store.sessions(run_ids=selected), store.commands(selected)
    finally:
        store.close()


def read_sessions(db: str) -> list[dict]:
    """Every session the store at `db` holds, read without writing."""
    store = Store(db, readonly=True)
    try:
        return store.sessions()
    finally:
        store.close()


# ---- output files: never a store, always whole --------------------------------------------------
def is_store(path: Path) -> bool:
    """Whether `path` is a regular SQLite file with qbench's tables (or one too damaged to tell, or one
    whose rows may still be in a -wal beside it); read without writing anything."""
    try:
        if not path.is_file():
            return False
        if Path(f"{path}-wal").exists():
            return True
        with open(path, "rb") as file:
            if file.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                return False
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return True  # a SQLite file that does not open may still be someone's results: never overwrite it
    except OSError:
        return False
    return {"meta", "sessions"} <= tables


def _same_file(path: Path, other: Path) -> bool:
    try:
        return path.resolve() == other.resolve() or os.path.samefile(path, other)
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return False


def check_output(out: Path, reading: Iterable[str | Path] = ()) -> None:
    """Refuse, before anything is read or written, an output path that is a store being read
    (`reading`), any qbench store, or a store's -wal/-shm/-journal (through a link too)."""
    try:
        resolved = out.resolve()
    except (OSError, RuntimeError):  # a loop of links: the name itself is all there is to check
        resolved = out
    for path in dict.fromkeys((out, resolved)):
        for side in ("", *SIDE_FILES):
            if not path.name.endswith(side) or path.name == side:
                continue
            store = path.with_name(path.name[: len(path.name) - len(side)]) if side else path
            read = any(_same_file(store, Path(db)) for db in reading)
            if read or is_store(store):
                what = "the results store" if read else "a qbench results store"
                what = f"the {side[1:]} file of {what} {store}" if side else f"{what} {store}"
                raise UserError(f"--out {out} is {what}: writing it would destroy results", "pass --out a new file")


def write_output(out: Path, make: Callable[[Path], None]) -> None:
    """Write an output file whole: `make(path)` writes it beside `out` and it is renamed into place, so
    a failed write leaves no half file and the old one as it was. A device or pipe (`/dev/stdout`) is
    written in place, never replaced. Every failure is one line."""
    from qbench.model.cache import write_whole

    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write --out {out}: {parent} is a file, not a folder", "pass another --out")
    try:
        if out.exists() and not out.is_file():
            make(out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_whole(out, make)
    except OSError as error:
        raise UserError(f"cannot write --out {out}: {error.strerror or error}", "pass a writable --out path") from None

"""The server's state: one SQLite database (WAL) under $TUNEKIT_HOME/serve/, beside the files.

    $TUNEKIT_HOME/serve/
      tunekit.db        keys (hashes only), files, jobs, events
      files/<id>[.ext]  uploaded and result files, named by their ids, never by user-given names
      jobs/<id>.yaml    the tunekit config each job runs
      jobs/<id>.log     its worker's output
      runs/<id>/        its run folder, as `tunekit run` makes one

SQLite because the state is small, must survive a SIGKILL of the server at any moment
(a committed transaction is on disk; synchronous=FULL), and needs no other process. WAL
lets the request threads read while the scheduler writes. Each thread opens its own
connection: sqlite3 connections are not shared across threads.

Rows go in and out as plain dicts; JSON columns (hyperparameters, metadata, error, ...)
are decoded on the way out.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import string
import time
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
  name TEXT PRIMARY KEY, owner TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS files (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
  filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
  path TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT, checks TEXT);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
  created_at INTEGER NOT NULL, status TEXT NOT NULL, model TEXT NOT NULL,
  training_file TEXT NOT NULL, validation_file TEXT, hyperparameters TEXT NOT NULL, seed INTEGER NOT NULL,
  suffix TEXT, metadata TEXT, config TEXT NOT NULL, fine_tuned_model TEXT, model_deleted INTEGER NOT NULL DEFAULT 0,
  error TEXT, result_files TEXT NOT NULL DEFAULT '[]', trained_tokens INTEGER,
  started_at INTEGER, finished_at INTEGER, pid INTEGER, metrics_step INTEGER NOT NULL DEFAULT 0,
  estimated_finish INTEGER);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
  created_at INTEGER NOT NULL, level TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
"""
# Columns added to SCHEMA after its first release: (table, column, type).
_ADDED = (("jobs", "estimated_finish", "INTEGER"),)
_JSON = ("hyperparameters", "metadata", "error", "result_files", "checks", "data", "config")
_ALPHABET = string.ascii_letters + string.digits


def serve_home(home: Path | None = None) -> Path:
    """$TUNEKIT_HOME/serve (or `home`/serve)."""
    from tunekit.hardware import tunekit_home

    return (home or tunekit_home()) / "serve"


def new_id(prefix: str, n: int = 24) -> str:
    """`prefix` + n random letters and digits, as OpenAI's ids look (file-..., ftjob-...)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def now() -> int:
    return int(time.time())


def db_path(root: Path) -> Path:
    return root / "tunekit.db"


def init(root: Path) -> None:
    """Create the folders and the schema (idempotent)."""
    for sub in ("files", "jobs", "runs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with connect(root) as db:
        db.executescript(SCHEMA)
        for table, column, kind in _ADDED:  # a database made by an older tunekit gains them
            if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


@contextlib.contextmanager
def connect(root: Path) -> Iterator[sqlite3.Connection]:
    """A connection for this thread; committed when the block ends without an error."""
    root.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: autocommit, transactions only where `transaction` opens one.
    db = sqlite3.connect(db_path(root), timeout=30, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: a read-then-write (a status change, a queue count) seen whole."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _decode(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for k in _JSON:
        if k in out and out[k] is not None:
            out[k] = json.loads(out[k])
    return out


def _encode(values: dict) -> dict:
    return {k: (json.dumps(v) if k in _JSON and v is not None else v) for k, v in values.items()}


def insert(db: sqlite3.Connection, table: str, values: dict) -> None:
    values = _encode(values)
    cols = ", ".join(values)
    db.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})", list(values.values()))


def update(db: sqlite3.Connection, table: str, key: str, values: dict) -> None:
    values = _encode(values)
    sets = ", ".join(f"{k} = ?" for k in values)
    db.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*values.values(), key])


def get(db: sqlite3.Connection, table: str, key: str, owner: str | None = None) -> dict | None:
    """The row with id `key`; None when absent or, with `owner`, someone else's."""
    sql, args = f"SELECT * FROM {table} WHERE id = ?", [key]
    if owner is not None:
        sql, args = sql + " AND owner = ?", [key, owner]
    return _decode(db.execute(sql, args).fetchone())


def select(db: sqlite3.Connection, sql: str, args: list | tuple = ()) -> list[dict]:
    return [_decode(r) for r in db.execute(sql, list(args)).fetchall()]


def page(db: sqlite3.Connection, table: str, where: str, args: list, after: str | None, limit: int,
         newest_first: bool = True) -> tuple[list[dict], bool]:
    """One cursor page of `table` rows matching `where`, in insertion order (newest first by
    default), starting after the row with id `after`; and whether more follow."""
    op, order = ("<", "DESC") if newest_first else (">", "ASC")
    if after:
        where += f" AND seq {op} COALESCE((SELECT seq FROM {table} WHERE id = ?), {'-1' if newest_first else '1e18'})"
        args = [*args, after]
    rows = select(db, f"SELECT * FROM {table} WHERE {where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1])
    return rows[:limit], len(rows) > limit


def add_event(db: sqlite3.Connection, job_id: str, message: str, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    insert(db, "events", {"id": new_id("ft-event-"), "job_id": job_id, "created_at": now(), "level": level,
                          "type": type, "message": message, "data": data})

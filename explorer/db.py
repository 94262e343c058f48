"""The run store's two back ends: an SQLite file (the default) or a PostgreSQL server.

The store's SQL is written once, in the standard form that PostgreSQL speaks, with ``?``
placeholders; this module rewrites what SQLite or psycopg needs (``%s`` placeholders,
``IS NOT DISTINCT FROM`` → ``IS``, no ``FOR UPDATE SKIP LOCKED`` on SQLite, where one statement
already holds the only write lock) and the column types of the schema (``BIGSERIAL``,
``DOUBLE PRECISION``, ``BYTEA`` on PostgreSQL). Rows are read by column name on both.

The schema version lives in ``PRAGMA user_version`` on SQLite and in a one-row table
``schema_version`` on PostgreSQL; the store's migrations run the same code on both.
PostgreSQL connections come from a ``psycopg_pool.ConnectionPool``, so every thread of a
server takes its own connection; the SQLite file has one connection guarded by a lock.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from explorer.errors import ConfigError

URL_SCHEMES = ("postgresql://", "postgres://")
POOL_MAX = 4  # connections per process: a worker needs 2 (training, watcher), a page server more
CONNECT_TIMEOUT_S = 10.0
_SCHEMA_LOCK = 0x52554E53  # "RUNS": one process at a time creates or migrates the tables


def database_errors() -> tuple[type[BaseException], ...]:
    """The exception types a store operation may raise from either back end's driver."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    try:
        import psycopg
    except ImportError:  # an install without PostgreSQL support
        return errors
    return (*errors, psycopg.Error)


def is_url(location: str | Path) -> bool:
    """True for a PostgreSQL URL, False for an SQLite file path."""
    return str(location).startswith(URL_SCHEMES)


def mask(location: str | Path) -> str:
    """The location with any password replaced by ``***`` (for messages and logs)."""
    text = str(location)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = urlencode([(k, "***" if k.lower() == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="/*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@functools.lru_cache(maxsize=512)
def _postgres_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


@functools.lru_cache(maxsize=512)
def _sqlite_sql(sql: str) -> str:
    return sql.replace(" IS NOT DISTINCT FROM ", " IS ").replace(" FOR UPDATE SKIP LOCKED", "")


def _postgres_ddl(ddl: str) -> str:
    """SQLite's CREATE statements for PostgreSQL; a table without a primary key gets the
    ``rowid`` column that SQLite has implicitly, so ``ORDER BY rowid`` is the order written."""
    ddl = re.sub(r"(CREATE TABLE IF NOT EXISTS \w+ \()(?![^;]*PRIMARY KEY)",
                 r"\1\n    rowid BIGSERIAL PRIMARY KEY,", ddl)
    ddl = ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)  # footprints are bytes: past 2**31
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    return re.sub(r"\bBLOB\b", "BYTEA", ddl)


class Tx:
    """One transaction (or, for reads, one connection) with the store's SQL translated."""

    def __init__(self, conn: Any, translate: Any) -> None:
        self._conn, self._sql = conn, translate

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (``rowcount``, ``fetchone``...)."""
        return self._conn.execute(self._sql(sql), tuple(args))

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row, or None."""
        return self.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Every row."""
        return self.execute(sql, args).fetchall()

    def count(self, sql: str, args: Sequence[Any] = ()) -> int:
        """The number of rows a write changed."""
        return int(self.execute(sql, args).rowcount)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for each of ``rows``."""
        cur = self._conn.cursor()
        try:
            cur.executemany(self._sql(sql), [tuple(r) for r in rows])
        finally:
            cur.close()


class Database(ABC):
    """What the store needs of a back end: transactions, DDL and the schema version."""

    kind = ""

    @abstractmethod
    def tx(self) -> Any:
        """A context manager: a ``Tx``, committed at the end, rolled back on an exception."""

    @abstractmethod
    def script(self, tx: Tx, ddl: str) -> None:
        """Run CREATE statements written for SQLite (types translated for PostgreSQL)."""

    def ddl(self, text: str) -> str:
        """One DDL statement written for SQLite, as this back end needs it."""
        return text

    @abstractmethod
    def version(self, tx: Tx) -> int:
        """The schema version (0 for a new store)."""

    @abstractmethod
    def set_version(self, tx: Tx, version: int) -> None:
        """Record the schema version."""

    @abstractmethod
    def columns(self, tx: Tx, table: str) -> set[str]:
        """The column names of ``table``."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection(s)."""


class SQLiteDatabase(Database):
    """One SQLite file in WAL mode: a page reads while a worker writes."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode loses nothing when the process dies, only on power loss.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._lock, self._conn:
            yield Tx(self._conn, _sqlite_sql)

    def script(self, tx: Tx, ddl: str) -> None:
        self._conn.executescript(ddl)

    def version(self, tx: Tx) -> int:
        return int(tx.one("PRAGMA user_version")[0])

    def set_version(self, tx: Tx, version: int) -> None:
        tx.execute(f"PRAGMA user_version = {int(version)}")

    def columns(self, tx: Tx, table: str) -> set[str]:
        return {r["name"] for r in tx.all(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresDatabase(Database):
    """A PostgreSQL database shared by app servers and workers, through a connection pool."""

    kind = "postgresql"

    def __init__(self, url: str, max_size: int | None = None) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool, PoolTimeout

        from explorer import settings

        size = max_size or int(settings.read("EXPLORER_DB_POOL") or POOL_MAX)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max(1, size), open=False, name="explorer-runs",
            kwargs={"autocommit": True, "row_factory": dict_row},
            # A connection broken by a server restart is replaced, not handed to a page.
            check=ConnectionPool.check_connection)
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout:
            self._pool.close()
            raise ConfigError(f"the run store {mask(url)} cannot be reached within "
                              f"{CONNECT_TIMEOUT_S:.0f} s; check $EXPLORER_RUNS_DB and that the "
                              f"PostgreSQL server runs and accepts this user.") from None

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            yield Tx(conn, _postgres_sql)

    def ddl(self, text: str) -> str:
        return _postgres_ddl(text)

    def script(self, tx: Tx, ddl: str) -> None:
        # Two servers starting at once must not both create the tables: serialise them.
        tx.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        for statement in _postgres_ddl(ddl).split(";"):
            if statement.strip():
                tx.execute(statement)

    def version(self, tx: Tx) -> int:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = tx.one("SELECT MAX(version) AS version FROM schema_version")
        return int(row["version"] or 0)

    def set_version(self, tx: Tx, version: int) -> None:
        tx.execute("DELETE FROM schema_version")
        tx.execute("INSERT INTO schema_version (version) VALUES (?)", (int(version),))

    def columns(self, tx: Tx, table: str) -> set[str]:
        return {r["column_name"] for r in tx.all(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?", (table,))}

    def close(self) -> None:
        self._pool.close()


def open_database(location: str) -> Database:
    """The back end for ``location``: a ``postgresql://`` URL or an SQLite file path."""
    return PostgresDatabase(location) if is_url(location) else SQLiteDatabase(location)


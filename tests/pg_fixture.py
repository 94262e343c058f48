"""A real PostgreSQL server for the run-store tests, started by the tests themselves.

Debian's ``postgresql`` package (``make postgres``) provides the binaries. The server runs as an
unprivileged user (PostgreSQL refuses root: as root the tests use the package's ``postgres``
user) in a temporary directory, on a free port, with its unix socket in that directory, and
stops when the session ends. Each test gets a fresh database. It never skips: without the
binaries the tests fail with the command that installs them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "explorer"
_names = itertools.count(1)


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make postgres` (Debian's "
                           "postgresql package) before the run-store tests.")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: the superuser URL of database ``name`` is ``url(name)``."""

    socket_dir: str
    port: int
    pg_ctl: list[str]  # the pg_ctl command as the server's user, with its data directory
    log: str

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"
                f"&port={self.port}")

    def admin(self, statement: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement)

    def restart(self) -> None:
        """Restart the server (every open connection breaks)."""
        subprocess.run([*self.pg_ctl, "restart", "-m", "fast", "-w", "-l", self.log],
                       check=True, capture_output=True)


@contextmanager
def start_postgres(durable: bool = False) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temporary directory, stopped and removed at the end.

    Args:
        durable: keep PostgreSQL's default fsync and synchronous commits (a benchmark); the
            tests turn them off, since a test server that dies loses nothing anyone needs.
    """
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="explorer-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres will not run as root: use the package's own user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("the user 'postgres' is missing: reinstall Debian's postgresql "
                               "package (`make postgres`).") from None
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, cwd=root)
        if done.returncode:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {done.stdout}{done.stderr}{tail}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C")
        options = (f"-p {port} -k {root} -c listen_addresses='127.0.0.1' "
                   "-c max_connections=200")
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        run(str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t",
            "60", "-o", options)
        yield PostgresServer(str(root), port,
                             [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)], str(log))
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m",
                            "immediate", "-w"], capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the whole session, started on first use (never skipped)."""
    try:
        with start_postgres() as server:
            yield server
    except RuntimeError as exc:  # not installed, or it would not start: a failure, not a skip
        pytest.fail(str(exc))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = f"t{os.getpid()}_{next(_names)}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    postgres_server.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The run store's location on each back end: an SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite")
    return request.getfixturevalue("postgres_url")


def raw_sql(location: str, statement: str) -> list[tuple]:
    """Run one statement with the plain driver, not the store's code (a second reader)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []
    with sqlite3.connect(location) as conn:
        return conn.execute(statement).fetchall()

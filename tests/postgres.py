"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster made by `initdb` in a
temporary folder and served by `pg_ctl` on a Unix socket only (no TCP port to collide with). When the
tests run as root the cluster belongs to the `postgres` user, as PostgreSQL refuses to run as root.
Missing binaries fail the run under CI (`.ci/run` installs them) and skip it elsewhere."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from tests.helpers import IN_CI

SUPERUSER = "dfnode"


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    return found[-1] or None


class PostgresServer:
    """One cluster; `new_database()` gives each test a database of its own."""

    def __init__(self, folder: Path, durable: bool = False):
        self.folder = folder
        self.durable = durable  # fsync on, as a real server (benchmarks); the tests run without it
        self.data = folder / "data"
        self.socket_dir = folder / "socket"
        self.log = folder / "postgres.log"
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    @staticmethod
    def available() -> str | None:
        """Why the server cannot run here, or None."""
        if _binary("initdb") is None or _binary("pg_ctl") is None:
            return "PostgreSQL (initdb, pg_ctl) is not installed"
        return None

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir()
        for path in (self.folder, self.socket_dir):
            path.chmod(0o777)
        if self._as_postgres:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(str(_binary("initdb")), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        fsync = "" if self.durable else " -c fsync=off"
        options = f"-k {self.socket_dir} -c listen_addresses=''{fsync} -c max_connections=200"
        self._run(str(_binary("pg_ctl")), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(_binary("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        name = f"test{next(self._names)}"
        with psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def skip_or_fail(reason: str) -> None:
    import pytest

    if IN_CI:
        pytest.fail(f"{reason} (.ci/run installs it)")
    pytest.skip(reason)

"""A throwaway PostgreSQL server for tests, started from the installed binaries in a temp dir (no server is
assumed to be running), with a fresh database per caller."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(os.environ.get("SHOAL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_owner(args: list[str], owner: str | None) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", owner, "--", *args] if owner else args


class PostgresServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.user = "shoal"

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.owner:
            shutil.chown(self.root, self.owner)
        if not self.data.exists():
            subprocess.run(_as_owner([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                                      "--no-sync", "-E", "UTF8"], self.owner), check=True, capture_output=True)
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=600")
        subprocess.run(_as_owner([str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                                  str(self.root / "server.log"), "-w", "start"], self.owner),
                       check=True, capture_output=True)
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_owner([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                                 self.owner), capture_output=True)

    def url(self, database: str = "postgres") -> str:
        """For SQLAlchemy."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """For psycopg."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def own_server(port: int) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the caller's own on `port`, so that it may be stopped and restarted (in /tmp: the
    server's user must reach its folder)."""
    root = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
    server = PostgresServer(root, port).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)

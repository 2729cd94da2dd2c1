"""Helpers for tests that run `auditdb worker` as a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_worker(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    """A worker process writing its log to a file (a pipe nobody reads would block it)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "auditdb", "--dsn", dsn, "worker", "--poll-interval", "0.2"], stdout=out, stderr=out
        )


def drain(dsn: str, timeout: float = 300) -> None:
    """Run `auditdb worker --once` to completion and insist it succeeded."""
    proc = subprocess.run(
        [sys.executable, "-m", "auditdb", "--dsn", dsn, "worker", "--once"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr

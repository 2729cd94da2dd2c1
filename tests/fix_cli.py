"""Running the command line as users do: `python -m auditdb …` in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from typing import IO, Any


def auditdb_process(
    *args: str, stdout: int | IO[Any] = subprocess.PIPE, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m auditdb ARGS`, its stdout where given (a closed pipe, /dev/full…), stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "auditdb", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=timeout,
    )

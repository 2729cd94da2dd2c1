"""Reading and exporting manners (issue 13): absurd times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditdb", "--dsn", dsn, *args], capture_output=True, text=True, check=False, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Absurd times: one line naming the option and the value


@pytest.mark.parametrize(
    "value",
    [
        "999999d",
        "99999999999999999999d",
        "9" * 5000 + "s",
        "999999999w",
        "0000-01-01",
        "10000-01-01",
        "9999-12-31T23:00-05:00",
        "0001-01-01T00:00+01:00",
    ],
    ids=lambda v: v[:24],
)
def test_times_out_of_range_are_one_line(dsn: str, tmp_path: Path, value: str) -> None:
    commands = [
        ["log", "--since", value],
        ["log", "--until", value],
        ["export", "-o", str(tmp_path / "x.csv"), "--since", value],
        ["export", "-o", "-", "--until", value],
        ["history", "Doc", "1", "--as-of", value],
    ]
    for args in commands:
        proc = _cli(dsn, *args)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and len(line) < 200
        option = args[-2]
        assert line.startswith(f"Error: Invalid value for {option}: '{value[:40]}"), line
        assert "out of range" in line
    assert list(tmp_path.iterdir()) == []

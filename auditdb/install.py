"""Installing, upgrading and removing the auditdb schema through alembic migrations."""

from __future__ import annotations

import functools
import hashlib
import io
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from auditdb.db import connect, describe_error, pinned, resolve_dsn
from auditdb.errors import AuditDBError

if TYPE_CHECKING:
    from alembic.config import Config

# alembic and SQLAlchemy are imported where they are used: every other command (and `doctor`,
# which reads HEAD_REVISION) starts without loading them.

__all__ = [
    "DEFINITIONS",
    "HEAD_REVISION",
    "definitions_marker",
    "definitions_sql",
    "finish_upgrade",
    "foreign_objects",
    "install",
    "install_sql",
    "installed_version",
    "run_revision_sql",
    "uninstall",
]

VERSION_TABLE = "alembic_version"
VERSION_TABLE_SCHEMA = "auditdb"
# The newest revision in migrations/versions; test_install checks it against alembic's head.
HEAD_REVISION = "0007"
# The current definitions (sql/definitions/<name>.sql), in the order they run: every function,
# policy, event trigger and grant has its one home there. Revisions change only what holds data;
# these are applied after the last one, whenever the database has others.
DEFINITIONS = (
    "context",
    "guard",
    "maintenance",
    "capture",
    "partitions",
    "events",
    "access",
    "watch",
    "refresh",
    "grants",
)
SCHEMA_SQL = "create schema if not exists auditdb"
INSTALL_LOCK_SQL = "select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('auditdb.install'))"
INSTALL_LOCK_TIMEOUT = "60s"


def _migrations_dir() -> Path:
    return Path(str(resources.files("auditdb.migrations")))


def revision_sql(revision: str, concerns: list[str]) -> str:
    """The frozen SQL of one revision: sql/<revision>_<concern>.sql, in the given order."""
    root = resources.files("auditdb.sql")
    parts = []
    for concern in concerns:
        name = f"{revision}_{concern}.sql"
        parts.append(f"-- {name}\n" + (root / name).read_text(encoding="utf-8"))
    return "\n".join(parts)


def definitions_sql() -> str:
    """The current definitions, as one script (re-runnable: create or replace, if not exists)."""
    root = resources.files("auditdb.sql") / "definitions"
    return "\n".join(
        f"-- definitions/{name}.sql\n" + (root / f"{name}.sql").read_text(encoding="utf-8") for name in DEFINITIONS
    )


@functools.cache
def definition_function_names() -> list[str]:
    """The names of the functions sql/definitions/ defines (auditdb.foreign_objects takes them)."""
    return sorted(set(re.findall(r"create or replace function auditdb\.(\w+)\s*\(", definitions_sql())))


def foreign_objects(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """What is in or on schema auditdb that auditdb did not make: (kind, identity, how to remove it)."""
    rows = conn.execute(
        "select kind, identity, remedy from auditdb.foreign_objects(%s)", (definition_function_names(),)
    ).fetchall()
    # Removed in this order: what uses a function (a trigger, a policy) goes before the function.
    order = ["privilege", "policy", "rule", "trigger", "column default", "table owner", "function owner", "function"]
    found = [(str(k), str(i), str(r)) for k, i, r in rows]
    return sorted(found, key=lambda f: (order.index(f[0]) if f[0] in order else len(order), f[1]))


@functools.cache
def definitions_marker() -> str:
    """The comment on schema auditdb that says which definitions it holds."""
    digest = hashlib.sha256(definitions_sql().encode("utf-8")).hexdigest()[:16]
    return f"auditdb definitions {digest}"


def finish_upgrade(conn: psycopg.Connection[Any]) -> bool:
    """After the revisions: apply the current definitions unless the database has them already.

    Only at the head revision (an install stopped at an older one keeps that one's definitions).
    Returns whether anything ran.
    """
    version = installed_version(conn)
    if version != HEAD_REVISION:
        return False
    row = conn.execute("select pg_catalog.obj_description('auditdb'::regnamespace, 'pg_namespace')").fetchone()
    marker = definitions_marker()
    if row and row[0] == marker:
        return False
    # No statement still running the old capture code may finish after this commits: wait for
    # every transaction writing a tracked table, and hold new ones until then.
    for (relid,) in conn.execute("select relid::regclass::text from auditdb.tracked_tables").fetchall():
        conn.execute(sql.SQL("lock table {} in share mode").format(sql.SQL(str(relid))))
    # auditdb's own DDL: the watchers leave it alone (they are among what is being redefined).
    conn.execute("select auditdb.begin_maintenance()")
    conn.execute(definitions_sql().encode("utf-8"))
    from auditdb.upgrade import upgrade_configs

    upgrade_configs(conn)
    # Anything a role running as auditdb_owner could have left behind (before this release,
    # application code could run as it) goes, each removal logged.
    for kind, identity, remedy in foreign_objects(conn):
        conn.execute(sql.SQL(remedy))
        conn.execute(
            "select auditdb.log_audit_change('AuditSchema', %s, %s, null, %s)",
            (
                identity,
                kind,
                psycopg.types.json.Jsonb(
                    {"operation": "foreign_object_removed", "kind": kind, "object": identity, "statement": remedy}
                ),
            ),
        )
    conn.execute(sql.SQL("comment on schema auditdb is {}").format(sql.Literal(marker)))
    conn.execute("select auditdb.end_maintenance()")
    return True


def run_revision_sql(revision: str, concerns: list[str]) -> None:
    """Run a revision's SQL from inside an alembic migration (online or --sql)."""
    from alembic import context, op

    text = revision_sql(revision, concerns)
    if context.is_offline_mode():
        op.execute(text)
        return
    # Straight to psycopg, without parameters: the SQL holds '%' and ':' that SQLAlchemy's
    # text() and psycopg's placeholders would otherwise read as binds.
    driver = op.get_bind().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    with driver.cursor() as cur:
        cur.execute(text.encode("utf-8"))


def _config(output: io.StringIO | None = None) -> Config:
    from alembic.config import Config

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    return cfg


def alembic_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def installed_version(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """The schema version in the connected database, or None when auditdb is not installed."""
    row = conn.execute("select to_regclass('auditdb.alembic_version') is not null").fetchone()
    if not row or not row[0]:
        return None
    version = conn.execute("select version_num from auditdb.alembic_version").fetchone()
    return str(version[0]) if version else None


def install(
    dsn: str | None = None, target: str = "head", *, lock_timeout: str = INSTALL_LOCK_TIMEOUT
) -> tuple[str | None, str]:
    """Create or upgrade schema auditdb (to the head revision, or target); returns the versions before and after.

    Idempotent: at the head revision it changes nothing.
    """
    import sqlalchemy
    from alembic import command
    from sqlalchemy.pool import NullPool

    conninfo = resolve_dsn(dsn)
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: connect(conninfo, application_name="auditdb install"),
        poolclass=NullPool,
    )
    try:
        with engine.connect() as sa_conn:
            driver = sa_conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            before = installed_version(driver)
            sa_conn.rollback()
            cfg = _config()
            cfg.attributes["connection"] = sa_conn
            cfg.attributes["lock_timeout"] = lock_timeout
            command.upgrade(cfg, target)
            sa_conn.commit()
            after = installed_version(driver)
    except sqlalchemy.exc.DBAPIError as e:
        if isinstance(e.orig, psycopg.Error):
            raise _install_error(e.orig) from e
        raise
    except psycopg.Error as e:
        raise _install_error(e) from e
    finally:
        engine.dispose()
    return before, after or ""


def _install_error(e: psycopg.Error) -> AuditDBError:
    error = describe_error(e)
    if isinstance(e, psycopg.errors.LockNotAvailable):
        return AuditDBError(
            f"install gave up waiting for a lock another transaction holds ({error}); "
            "nothing was changed: retry when the applications' long transactions have ended"
        )
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return type(error)(f"{error} — `auditdb install` needs a superuser (it creates roles and triggers)")
    if isinstance(e, psycopg.OperationalError):
        return AuditDBError(f"cannot connect: {error}")
    return error


def install_sql() -> str:
    """The SQL `install` would run on an empty database (alembic's offline mode)."""
    from alembic import command

    out = io.StringIO()
    command.upgrade(_config(out), "head", sql=True)
    return out.getvalue()


def uninstall(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Drop schema auditdb with its triggers, event triggers and functions; roles stay.

    Returns False when there was nothing to remove.
    """
    with pinned(conn):
        conn.execute(INSTALL_LOCK_SQL)
        row = conn.execute("select to_regnamespace('auditdb') is not null").fetchone()
        if not row or not row[0]:
            return False
        # Event triggers and audit triggers depend on functions of the schema, so the cascade
        # removes them; naming the event triggers first makes a missing privilege say so.
        for (name,) in conn.execute(
            """select e.evtname from pg_catalog.pg_event_trigger e
                 join pg_catalog.pg_proc p on p.oid = e.evtfoid
                where p.pronamespace = 'auditdb'::regnamespace"""
        ).fetchall():
            conn.execute(psycopg.sql.SQL("drop event trigger {}").format(psycopg.sql.Identifier(str(name))))
        conn.execute("drop schema auditdb cascade")
    return True

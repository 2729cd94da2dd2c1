"""Installing, upgrading and removing the auditdb schema through alembic migrations."""

from __future__ import annotations

import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from auditdb import integrity
from auditdb.db import connect, describe_error, pinned, resolve_dsn
from auditdb.errors import AuditDBError
from auditdb.integrity import Foreign

if TYPE_CHECKING:
    from alembic.config import Config

# alembic and SQLAlchemy are imported where they are used: every other command (and `doctor`,
# which reads HEAD_REVISION) starts without loading them.

__all__ = [
    "DEFINITIONS",
    "HEAD_REVISION",
    "SECURED_REVISION",
    "UpgradeNotes",
    "definitions_marker",
    "definitions_sql",
    "finish_upgrade",
    "foreign_objects",
    "install",
    "install_sql",
    "installed_version",
    "run_revision_sql",
    "secure_before_revisions",
    "uninstall",
]

VERSION_TABLE = "alembic_version"
VERSION_TABLE_SCHEMA = "auditdb"
# The newest revision in migrations/versions; test_install checks it against alembic's head.
HEAD_REVISION = "0010"
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
    "search",
    "seal",
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


def definition_sql(name: str) -> str:
    """One file of the current definitions (sql/definitions/<name>.sql)."""
    root = resources.files("auditdb.sql") / "definitions"
    return f"-- definitions/{name}.sql\n" + (root / f"{name}.sql").read_text(encoding="utf-8")


def definitions_sql() -> str:
    """The current definitions, as one script (re-runnable: create or replace, if not exists)."""
    return "\n".join(definition_sql(name) for name in DEFINITIONS)


@functools.cache
def historical_function_names() -> list[str]:
    """The names of the functions the revisions (sql/0001_*.sql …) made, before sql/definitions/."""
    root = resources.files("auditdb.sql")
    found: set[str] = set()
    for entry in root.iterdir():
        if re.fullmatch(r"\d{4}_\w+\.sql", entry.name):
            text = entry.read_text(encoding="utf-8")
            found.update(re.findall(r"create (?:or replace )?function auditdb\.(\w+)\s*\(", text))
    return sorted(found)


@functools.cache
def definition_function_names() -> list[str]:
    """The names of the functions sql/definitions/ defines (auditdb.foreign_objects takes them)."""
    return sorted(set(re.findall(r"create or replace function auditdb\.(\w+)\s*\(", definitions_sql())))


def foreign_objects(
    conn: psycopg.Connection[Any], *, fresh: list[int] | None = None, log_defaults: bool = True
) -> list[Foreign]:
    """What is in or on schema auditdb that auditdb did not make (auditdb/integrity.py)."""
    return integrity.foreign_objects(conn, definition_function_names(), fresh=fresh, log_defaults=log_defaults)


# The first revision after which application code could no longer act as auditdb_owner.
SECURED_REVISION = "0007"


@dataclass
class UpgradeNotes:
    """What an upgrade removed and found before the current definitions could log it."""

    held: set[tuple[str, str, str]]
    removed: list[Foreign] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def secure_before_revisions(conn: psycopg.Connection[Any]) -> UpgradeNotes:
    """Before the revisions upgrade a release older than 0007: nothing of it runs as the superuser.

    Its watchers are disabled until the definitions enable them again, its functions dropped or
    left raising, views, types and inheriting tables it should not hold removed, and whatever is
    attached to its tables (triggers, rules, policies, constraints, defaults…) that auditdb did not
    make removed, all before a revision writes a row as the superuser.
    """
    notes = UpgradeNotes(held=integrity.held_privileges(conn))
    removed, notes.counts = integrity.secure_old_release(conn, definition_function_names(), historical_function_names())
    notes.removed += removed
    attached = [f for f in foreign_objects(conn, log_defaults=False) if f.kind not in ("function", "function owner")]
    _remove(conn, attached)
    notes.removed += attached
    return notes


@functools.cache
def definitions_marker() -> str:
    """What the comment of auditdb.alembic_version says once the current definitions are applied.

    The version table is the installing superuser's, and only its owner may comment on it:
    auditdb_owner (which application code could act as before release 0007) owns the schema and
    could have forged a comment there, or dropped the table and made its own, which the owner shows.
    """
    digest = hashlib.sha256(definitions_sql().encode("utf-8")).hexdigest()[:16]
    return f"auditdb definitions {digest}"


MARKER_SQL = """select pg_catalog.obj_description(c.oid, 'pg_class')
                  from pg_catalog.pg_class c join pg_catalog.pg_roles r on r.oid = c.relowner
                 where c.oid = pg_catalog.to_regclass('auditdb.alembic_version') and r.rolsuper"""


def installed_marker(conn: psycopg.Connection[Any]) -> str | None:
    """The definitions the database holds (definitions_marker() when they are this release's)."""
    row = conn.execute(MARKER_SQL).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def finish_upgrade(conn: psycopg.Connection[Any], *, migrated: bool = False, notes: UpgradeNotes | None = None) -> bool:
    """After the revisions: apply the current definitions when revisions ran or the database holds others.

    Only at the head revision (an install stopped at an older one keeps that one's definitions).
    notes: what secure_before_revisions did, when it ran. Returns whether anything ran.
    """
    if installed_version(conn) != HEAD_REVISION:
        return False
    marker = definitions_marker()
    if not migrated and installed_marker(conn) == marker:
        return False
    if notes is None:
        notes = UpgradeNotes(held=integrity.held_privileges(conn))
    # No statement still running the old capture code may finish after this commits: wait for
    # every transaction writing a tracked table, and hold new ones until then.
    for schema, name in conn.execute(
        """select n.nspname::text, c.relname::text from auditdb.tracked_tables t
             join pg_catalog.pg_class c on c.oid = t.relid join pg_catalog.pg_namespace n on n.oid = c.relnamespace"""
    ).fetchall():
        conn.execute(sql.SQL("lock table {} in share mode").format(sql.Identifier(schema, name)))
    # Whatever is attached to auditdb's tables that auditdb did not make goes before anything runs
    # on them; functions of others, once the definitions have rewritten auditdb's own, after.
    attached = [f for f in foreign_objects(conn) if f.kind not in ("function", "function owner")]
    _remove(conn, attached)
    notes.removed += attached
    for name in DEFINITIONS:
        conn.execute(definition_sql(name).encode("utf-8"))
        if name == "maintenance":
            # auditdb's own DDL from here on: the watchers (redefined next) leave it alone.
            conn.execute("select auditdb.begin_maintenance()")
    fresh = [
        int(r[0])
        for r in conn.execute(
            """select p.oid::int8 from pg_catalog.pg_proc p
                where p.pronamespace = 'auditdb'::regnamespace
                  and p.xmin::text::bigint = pg_catalog.txid_current() % 4294967296"""
        ).fetchall()
    ]
    late = foreign_objects(conn, fresh=fresh)
    _remove(conn, late)
    notes.removed += late
    _log_removed(conn, notes)
    from auditdb.upgrade import upgrade_configs

    # As auditdb_owner, which owns the registry: nothing there runs as a superuser.
    conn.execute("set local role auditdb_owner")
    upgrade_configs(conn)
    conn.execute("reset role")
    conn.execute(sql.SQL("comment on table auditdb.alembic_version is {}").format(sql.Literal(marker)))
    conn.execute("select auditdb.end_maintenance()")
    return True


def _remove(conn: psycopg.Connection[Any], found: list[Foreign]) -> None:
    """Remove each foreign object (one that needs a person is left; _log_removed says so).

    One that something else depends on stops the upgrade (nothing is changed): a function owned
    by auditdb's roles that an application trigger uses would keep running with their rights if
    left, and dropping it with CASCADE would silently take the trigger with it.
    """
    for f in found:
        if f.remedy.startswith("--"):
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL(f.remedy))
        except psycopg.errors.DependentObjectsStillExist as e:
            raise AuditDBError(
                f"{f.identity} belongs to auditdb's roles but was not made by auditdb, and cannot be removed: "
                f"{e.diag.message_primary}; nothing was changed. As a superuser, drop it or give it to its "
                "rightful owner, then install again"
            ) from e


def _log_removed(conn: psycopg.Connection[Any], notes: UpgradeNotes) -> None:
    """Log what the upgrade removed or found, once auditdb's own functions are in place."""
    logged: set[tuple[str, str]] = set()
    for f in notes.removed:
        if (f.kind, f.identity) in logged:
            continue
        logged.add((f.kind, f.identity))
        removed = not f.remedy.startswith("--")
        operation = "foreign_object_removed" if removed else "foreign_object_found"
        _log_schema(
            conn,
            f.identity,
            f.kind,
            {"operation": operation, "kind": f.kind, "object": f.identity, "statement": f.remedy},
        )
    # auditdb's roles hold exactly what sql/definitions/grants.sql gives them: a privilege one held
    # before and not now was granted by someone else (or by an older release), and is logged.
    for obj, grantee, privilege in integrity.lost_privileges(conn, notes.held):
        _log_schema(
            conn,
            f"{grantee} {privilege} on {obj}",
            "privilege",
            {"operation": "privilege_revoked", "grantee": grantee, "privilege": privilege, "object": obj},
        )
    for line in integrity.structure_differences(conn):
        _log_schema(conn, line, "structure", {"operation": "foreign_object_found", "kind": "structure", "object": line})
    if any(notes.counts.values()):
        _log_schema(conn, "auditdb", "upgrade", {"operation": "old_release_secured", **notes.counts})


def _log_schema(conn: psycopg.Connection[Any], entity_id: str, name: str, metadata: dict[str, Any]) -> None:
    conn.execute(
        "select auditdb.log_audit_change('AuditSchema', %s, %s, null, %s)",
        (entity_id, name, psycopg.types.json.Jsonb(metadata)),
    )


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
            cfg.attributes["to_head"] = target in ("head", HEAD_REVISION)
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

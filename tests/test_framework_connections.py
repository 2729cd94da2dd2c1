"""The Python API on connections frameworks configure their way, its refusals, and how connecting fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import pq, sql
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Dumper, Loader, PyFormat
from psycopg.rows import dict_row, namedtuple_row
from psycopg.types.json import set_json_dumps
from psycopg.types.string import TextLoader

import auditdb
from auditdb.cli import cli
from auditdb.context import FIELDS
from auditdb.db import describe_error
from auditdb.errors import AuditDBError
from auditdb.worker import Worker
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE, scalar
from tests.fix_django import configure_django

ITEMS = "create table public.items (id int primary key, name text)"
ITEMS_TOML = '[tables."public.items"]\nentity_type = "Item"\nname = "name"\n'


class _RefusingLoader(Loader):
    def load(self, data: Buffer) -> Any:
        raise AssertionError("auditdb used the caller's loader")


class _RefusingDumper(Dumper):
    oid = psycopg.postgres.types["text"].oid

    def dump(self, obj: Any) -> Buffer:
        raise AssertionError("auditdb used the caller's dumper")


def _refusing_dumps(obj: Any) -> str:
    raise AssertionError("auditdb used the caller's JSON dumps")


def _django_like(dsn: str) -> psycopg.Connection[Any]:
    """What Django 5.2's postgresql backend sets up on psycopg 3 (psycopg_any.get_adapters_template)."""
    ctx = AdaptersMap(psycopg.adapters)
    for name in ("json", "jsonb", "inet", "cidr"):  # Django registers jsonb, inet, cidr; json too here
        ctx.register_loader(name, TextLoader)
    return psycopg.connect(dsn, autocommit=True, context=ctx, cursor_factory=psycopg.ClientCursor)


def _hostile(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    for name in ("json", "jsonb", "text", "int4", "int8", "bool", "inet"):
        conn.adapters.register_loader(name, _RefusingLoader)
    conn.adapters.register_dumper(str, _RefusingDumper)
    set_json_dumps(_refusing_dumps, conn)
    return conn


def _planted_types(dsn: str) -> psycopg.Connection[Any]:
    """A session whose search_path finds its own text and jsonb before pg_catalog's."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("create type pg_temp.text as (planted int); create type pg_temp.jsonb as (planted int)")
    conn.execute("set search_path = pg_temp, public, pg_catalog")
    return conn


CONNECTIONS: dict[str, Callable[[str], psycopg.Connection[Any]]] = {
    "django-loaders-client-cursor": _django_like,
    "dict_row": lambda dsn: psycopg.connect(dsn, autocommit=True, row_factory=dict_row),
    "namedtuple_row": lambda dsn: psycopg.connect(dsn, autocommit=True, row_factory=namedtuple_row),
    "raw-cursor": lambda dsn: psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.RawCursor),
    "pgbouncer-no-prepare": lambda dsn: psycopg.connect(dsn, autocommit=True, prepare_threshold=None),
    "prepare-everything": lambda dsn: psycopg.connect(dsn, autocommit=True, prepare_threshold=0),
    "hostile-adapters": _hostile,
    "planted-types": _planted_types,
    "not-autocommit": lambda dsn: psycopg.connect(dsn, row_factory=dict_row),
}


def _configuration(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """What the caller configured on a connection, for checking auditdb left it alone."""
    oids = [psycopg.postgres.types[name].oid for name in ("json", "jsonb", "text", "inet", "int8")]
    return (
        conn.row_factory,
        conn.cursor_factory,
        conn.prepare_threshold,
        conn.autocommit,
        *(conn.adapters.get_loader(oid, pq.Format.TEXT) for oid in oids),
        conn.adapters.get_dumper(str, PyFormat.AUTO),
    )


def _drain(dsn: str) -> int:
    return Worker(dsn, poll_interval=0.1).run(once=True)


@pytest.mark.parametrize("kind", list(CONNECTIONS))
def test_every_api_call_works_whatever_the_connection_was_configured_with(
    kind: str, dsn: str, conn: psycopg.Connection[Any], track: Track
) -> None:
    track(ITEMS, ITEMS_TOML)
    with CONNECTIONS[kind](dsn) as app:
        before = _configuration(app)
        for round_ in range(3):  # prepare-everything: the second and third run prepared statements
            with app.transaction():
                with auditdb.context(app, actor_id="ann", ip="203.0.113.7", request_id=f"r{round_}"):
                    assert auditdb.current_context(app)["actor_id"] == "ann"
                    assert auditdb.current_context(app)["ip"] == "203.0.113.7"
                    queue_id = auditdb.emit(app, "LOGIN", entity_type="User", entity_id=42, metadata={"n": round_})
                    assert isinstance(queue_id, int) and queue_id > 0
                    # No placeholder (RawCursor wants $1) and no str (hostile-adapters refuses to dump one).
                    app.execute(sql.SQL("insert into public.items values ({}, 'item')").format(sql.Literal(round_)))
                assert auditdb.current_context(app)["actor_id"] is None
                auditdb.set_context(app, actor_id="bob")
                assert auditdb.current_context(app) == {**dict.fromkeys(FIELDS), "actor_id": "bob"}
            if not app.autocommit:
                app.commit()
        assert _configuration(app) == before
    assert _drain(dsn) == 3
    logged = entries(conn)  # the changes, captured at once, then the events the worker moved
    assert [(e["action"], e["entity_id"], e["actor_id"], str(e["ip"])) for e in logged] == [
        *(("CREATE", str(n), "ann", "203.0.113.7") for n in range(3)),
        *(("LOGIN", "42", "ann", "203.0.113.7") for _ in range(3)),
    ]
    assert [e["metadata"] for e in logged[3:]] == [{"n": n, "request_id": f"r{n}"} for n in range(3)]


def test_in_pipeline_mode_the_context_ends_with_its_block(
    dsn: str, conn: psycopg.Connection[Any], track: Track
) -> None:
    """Statements queued in a pipeline leave libpq's status ACTIVE; the context is restored all the same."""
    track(ITEMS, ITEMS_TOML)
    with psycopg.connect(dsn, autocommit=True) as app:
        before = _configuration(app)
        with app.pipeline(), app.transaction():
            with auditdb.context(app, actor_id="ann"):
                auditdb.emit(app, "LOGIN", entity_id="ann")
                app.execute("insert into public.items values (1, 'by ann')")  # still queued at the block's end
            app.execute("insert into public.items values (2, 'by nobody')")
        with app.pipeline():
            app.execute("select 1")  # queued: status ACTIVE, yet no transaction
            with pytest.raises(auditdb.AuditDBError, match="needs a transaction"):
                auditdb.set_context(app, actor_id="ann")
        assert _configuration(app) == before
    _drain(dsn)
    assert [(e["action"], e["entity_id"], e["actor_id"]) for e in entries(conn)] == [
        ("CREATE", "1", "ann"),
        ("CREATE", "2", None),
        ("LOGIN", "ann", "ann"),
    ]


def test_set_context_and_context_refuse_autocommit_outside_a_transaction_alike(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(auditdb.AuditDBError) as plain:
        auditdb.set_context(conn, actor_id="ann")
    with pytest.raises(auditdb.AuditDBError) as block, auditdb.context(conn, actor_id="ann"):
        pass
    assert str(plain.value) == (
        "auditdb.set_context needs a transaction: on an autocommit connection outside one the context would "
        "vanish with the statement that sets it; call it inside `with conn.transaction():` "
        "(Django: `with transaction.atomic():`)"
    )
    assert str(block.value) == str(plain.value).replace("auditdb.set_context", "auditdb.context")
    # Nothing was sent: the refusal is made before any statement.
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    # Reading and emitting outside a transaction stay allowed (an event with no actor).
    assert set(auditdb.current_context(conn).values()) == {None}
    assert auditdb.emit(conn, "SYSTEM_STARTED") > 0


def test_a_database_without_auditdb_is_the_not_installed_error(empty_db: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
    message = f"auditdb is not installed in database {dbname}: run `auditdb install`"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        with conn.transaction():
            with pytest.raises(auditdb.NotInstalledError) as caught:
                auditdb.set_context(conn, actor_id="ann")
            assert str(caught.value) == message
            assert isinstance(caught.value.__cause__, psycopg.errors.InvalidSchemaName)
            # Not swallowed: the failed statement aborted the transaction, as any error does.
            assert conn.info.transaction_status == pq.TransactionStatus.INERROR
            raise psycopg.Rollback()
        for call in (
            lambda: auditdb.current_context(conn),
            lambda: auditdb.emit(conn, "LOGIN"),
        ):
            with pytest.raises(auditdb.NotInstalledError, match="run `auditdb install`"):
                call()
        with (
            pytest.raises(auditdb.NotInstalledError, match="run `auditdb install`"),
            conn.transaction(),
            auditdb.context(conn, actor_id="ann"),
        ):
            pass
        with (
            pytest.raises(auditdb.NotInstalledError, match="run `auditdb install`"),
            auditdb.EventSender(empty_db) as sender,
        ):
            sender.emit("LOGIN_FAILED", context={"ip": "203.0.113.7"})
        # A schema auditdb without the function (half removed, or another release's) says which.
        conn.execute("create schema auditdb")
        with pytest.raises(auditdb.NotInstalledError, match=r"auditdb\.set_context is missing"), conn.transaction():
            auditdb.set_context(conn, actor_id="ann")


def test_a_role_without_auditdb_writer_is_told_what_to_grant(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    hint = f"permission denied: role {APP_ROLE} may not call auditdb.set_context; the application's role needs "
    with pytest.raises(auditdb.PermissionDenied) as caught, app_conn.transaction():
        auditdb.set_context(app_conn, actor_id="ann")
    assert str(caught.value).startswith(hint)
    assert str(caught.value).endswith(f"(an administrator runs: auditdb grant {APP_ROLE} --writer)")
    with pytest.raises(auditdb.PermissionDenied, match=r"may not call auditdb\.emit"):
        auditdb.emit(app_conn, "LOGIN")
    # An error auditdb's function raises itself is not mistaken for a missing install or grant.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="written only by auditdb"):
        auditdb.emit(conn, "CREATE")


def test_unserialisable_metadata_is_a_clear_error(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(auditdb.AuditDBError, match=r"event metadata is not JSON: .*not JSON serializable"):
        auditdb.emit(conn, "LOGIN", metadata={"at": object()})
    with pytest.raises(auditdb.AuditDBError, match="event metadata is not JSON: Out of range float"):
        auditdb.emit(conn, "LOGIN", metadata={"score": float("nan")})
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 0


# --- a real Django connection -------------------------------------------------------------------


@pytest.fixture
def django_alias(dsn: str) -> Iterator[str]:
    """A Django 5.2 database alias for the test's database (skipped when Django is not installed)."""
    configure_django()
    from django.db import connections

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": info["dbname"],
        "HOST": info["host"],
        "PORT": str(info["port"]),
        "USER": info["user"],
    }
    alias = f"auditdb_{info['dbname']}"
    connections.settings[alias] = connections.configure_settings({"default": database})["default"]
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


def test_on_a_django_connection(django_alias: str, dsn: str, conn: psycopg.Connection[Any], track: Track) -> None:
    from django.db import connections, transaction

    track(ITEMS, ITEMS_TOML)
    wrapper = connections[django_alias]
    wrapper.ensure_connection()
    app = wrapper.connection
    jsonb = psycopg.postgres.types["jsonb"].oid
    assert app.adapters.get_loader(jsonb, pq.Format.TEXT).__name__ == "TextLoader"  # Django's own
    before = _configuration(app)
    # Outside atomic() Django's connection is in autocommit: a context would be lost at once.
    with pytest.raises(auditdb.AuditDBError, match=r"transaction\.atomic\(\)"):
        auditdb.set_context(app, actor_id="ann")
    with transaction.atomic(using=django_alias), auditdb.context(app, actor_id="ann", ip="203.0.113.7"):
        assert auditdb.current_context(app)["ip"] == "203.0.113.7"
        auditdb.emit(app, "LOGIN", entity_type="User", entity_id="ann", metadata={"method": "password"})
        with wrapper.cursor() as cur:
            cur.execute("insert into public.items values (%s, %s)", [1, "from Django"])
            cur.execute("select auditdb.current_context()")
            assert isinstance(cur.fetchone()[0], str)  # Django still loads jsonb as text
    assert _configuration(app) == before
    _drain(dsn)
    assert [(e["action"], e["actor_id"], str(e["ip"])) for e in entries(conn)] == [
        ("CREATE", "ann", "203.0.113.7"),
        ("LOGIN", "ann", "203.0.113.7"),
    ]


# --- connecting and its errors (auditdb/db.py) ------------------------------------------------


def _default_socket_answers() -> bool:
    return any(Path(d, ".s.PGSQL.5432").exists() for d in ("/var/run/postgresql", "/run/postgresql", "/tmp"))


def test_no_dsn_anywhere_hints_where_to_give_one(tmp_path: Path) -> None:
    if _default_socket_answers():
        pytest.skip("a server listens on libpq's default socket here: a bare connection might succeed")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}  # no PG*, no DSN
    bare = subprocess.run(
        [sys.executable, "-m", "auditdb", "partitions", "list"], capture_output=True, text=True, env=clean, check=False
    )
    assert bare.returncode == 1 and bare.stdout == "" and "Traceback" not in bare.stderr
    [line] = bare.stderr.strip().splitlines()
    assert line.startswith("Error: cannot connect to database (default database) on the local socket, port 5432: ")
    assert line.endswith(
        "no database was named: pass --dsn, or set AUDITDB_DSN, DATABASE_URL or libpq's PG* variables "
        "(PGHOST, PGDATABASE, …)"
    )
    # A PG* variable naming a server is a DSN given: the failure is about that server, without the hint.
    named = subprocess.run(
        [sys.executable, "-m", "auditdb", "partitions", "list"],
        capture_output=True,
        text=True,
        env={**clean, "PGHOST": str(tmp_path)},
        check=False,
    )
    assert named.returncode == 1 and "no database was named" not in named.stderr
    assert f"on {tmp_path}:5432" in named.stderr


def test_permission_denied_is_said_once(
    dsn: str, app_dsn: str, conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    conn.execute("create table public.secrets (id int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        app_conn.execute("select * from public.secrets")
    assert str(describe_error(caught.value)) == "permission denied for table secrets"
    # auditdb's own refusals, whose message does not say it, keep the prefix.
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as own:
        app_conn.execute("drop event trigger auditdb_guard_ddl")
    assert str(describe_error(own.value)).startswith("permission denied: must be owner of event trigger")
    runner = CliRunner()
    for args in (["install"], ["doctor"], ["uninstall", "--yes"], ["partitions", "ensure"]):
        result = runner.invoke(cli, ["--dsn", app_dsn, "--config", "/nonexistent.toml", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.lower().count("permission denied") == 1, (args, result.output)


def test_anything_but_a_psycopg_connection_is_told_what_to_pass(conn: psycopg.Connection[Any]) -> None:
    """A Django wrapper, a cursor, a not-yet-open connection (None): one line saying what to pass."""
    with conn.cursor() as cursor:
        for wrong in (None, cursor, object()):
            for call in (
                lambda c: auditdb.set_context(c, actor_id="u1"),
                lambda c: auditdb.current_context(c),
                lambda c: auditdb.emit(c, "LOGIN"),
                lambda c: auditdb.context(c, actor_id="u1").__enter__(),
            ):
                with pytest.raises(AuditDBError, match="takes a psycopg 3 connection, not ") as raised:
                    call(wrong)
                assert "django.db.connection.connection" in str(raised.value)
                assert "driver_connection" in str(raised.value)

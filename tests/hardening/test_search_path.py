"""search_path hijack: objects planted in public and pg_temp never divert or forge a write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from auditdb.worker import Worker
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE

PLANT = """
create function {schema}.now() returns timestamptz language plpgsql
    as $$ begin raise exception 'hijacked now'; end $$;
create function {schema}.lower(text) returns text language plpgsql
    as $$ begin raise exception 'hijacked lower'; end $$;
create function {schema}.txid_current() returns bigint language plpgsql
    as $$ begin raise exception 'hijacked txid'; end $$;
create function {schema}.current_setting(text, boolean) returns text language plpgsql
    as $$ begin raise exception 'hijacked current_setting'; end $$;
create function {schema}.jsonb_build_object(text, text) returns jsonb language plpgsql
    as $$ begin raise exception 'hijacked jsonb_build_object'; end $$;
create function {schema}.hijack_concat(text, text) returns text language plpgsql
    as $$ begin raise exception 'hijacked ||'; end $$;
create operator {schema}.|| (leftarg = text, rightarg = text, function = {schema}.hijack_concat);
create table {schema}.log (id bigint, action text);
create table {schema}.event_queue (id bigint);
"""


def test_planted_objects_change_nothing(conn: psycopg.Connection[Any], app_dsn: str, track: Track) -> None:
    track(
        "create table items (id int primary key, name text, secret_key text)",
        '[defaults]\nmask_last4 = ["*secret*"]\n[tables."public.items"]\nname = "lower(name) || \'!\'"\n',
    )
    conn.execute(f"grant all on items to {APP_ROLE}; grant auditdb_writer to {APP_ROLE}")
    try:
        with psycopg.connect(app_dsn) as app:
            app.execute(PLANT.format(schema="public"))
            app.execute("set search_path = public, pg_temp")
            app.execute(
                PLANT.format(schema="pg_temp")
                .replace("create operator pg_temp.", "-- ")
                .replace("create function pg_temp.hijack_concat", "create function pg_temp.hc")
            )
            # public before pg_catalog: an unpinned function would now run the planted ones.
            app.execute("set search_path = public, pg_catalog, pg_temp")
            with app.transaction(), auditdb.context(app, actor_id="u1", request_id="r1"):
                app.execute("insert into items values (1, 'Bolt', 'sk-123456789')")
                app.execute("update items set name = 'Nut'")
                app.execute("delete from items")
                auditdb.emit(app, "LOGIN", entity_id="u1")
            app.commit()
            for schema in ("public", "pg_temp"):
                row = app.execute(
                    psycopg.sql.SQL("select count(*) from {}.log").format(psycopg.sql.Identifier(schema))
                ).fetchone()
                assert row == (0,)
    finally:
        conn.execute(f"revoke auditdb_writer from {APP_ROLE}")
    Worker(conn.info.dsn).run(once=True)
    logged = [(e["action"], e["entity_name"], e["actor_id"], e["metadata"].get("request_id")) for e in entries(conn)]
    assert logged == [
        ("CREATE", "bolt!", "u1", "r1"),
        ("UPDATE", "nut!", "u1", "r1"),
        ("DELETE", "nut!", "u1", "r1"),
        ("LOGIN", None, "u1", "r1"),
    ]
    assert entries(conn)[0]["changes"]["secret_key"] == {"new": "***6789"}


def test_every_auditdb_function_pins_search_path(conn: psycopg.Connection[Any]) -> None:
    unpinned = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'auditdb'::regnamespace
              and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)"""
    ).fetchall()
    assert unpinned == []


# Objects an application that may create in public plants for other roles' queries to pick:
# each is a better match than PostgreSQL's own for some argument type (CVE-2018-1058).
PLANTED_FOR_PRIVILEGED = r"""
create table public.planted_hits (who text, what text);
grant insert on public.planted_hits to public;
create function public.planted(what text) returns void language plpgsql as $$
begin insert into public.planted_hits values (current_user, what); end $$;
create function public.obj_description(o oid, c text) returns text language plpgsql as $$
begin perform public.planted('obj_description'); return pg_catalog.obj_description(o, c::name); end $$;
create function public.format(f text, a text) returns text language plpgsql as $$
begin perform public.planted('format(text, text)'); return pg_catalog.format(f, a); end $$;
create function public.format(f text, a name, b name) returns text language plpgsql as $$
begin perform public.planted('format(text, name, name)'); return pg_catalog.format(f, a, b); end $$;
create function public.unnest(v int2vector) returns setof int2 language plpgsql as $$
begin perform public.planted('unnest(int2vector)'); return query select pg_catalog.unnest(v::int2[]); end $$;
create function public.name_append(s name[], v name) returns name[] language plpgsql as $$
begin perform public.planted('array_agg(name)'); return s || v; end $$;
create aggregate public.array_agg(name) (sfunc = public.name_append, stype = name[]);
create function public.oid_int(a oid, b integer) returns boolean language plpgsql as $$
begin perform public.planted('oid = integer'); return a = b::oid; end $$;
create operator public.= (leftarg = oid, rightarg = integer, function = public.oid_int);
create function public.oid_small(a oid, b smallint) returns boolean language plpgsql as $$
begin perform public.planted('oid = smallint'); return a = b::oid; end $$;
create operator public.= (leftarg = oid, rightarg = smallint, function = public.oid_small);
create function public.oid_big(a oid, b bigint) returns boolean language plpgsql as $$
begin perform public.planted('oid = bigint'); return a = b::oid; end $$;
create operator public.= (leftarg = oid, rightarg = bigint, function = public.oid_big);
create function public.text_big(a text, b bigint) returns text language plpgsql as $$
begin perform public.planted('text || bigint'); return a || b::text; end $$;
create operator public.|| (leftarg = text, rightarg = bigint, function = public.text_big);
create function public.left(a text, b bigint) returns text language plpgsql as $$
begin perform public.planted('left(text, bigint)'); return pg_catalog.left(a, b::int); end $$;
"""


def test_commands_run_by_privileged_roles_never_pick_planted_objects(
    conn: psycopg.Connection[Any], app_dsn: str, dsn: str, track: Track, tmp_path: Path
) -> None:
    toml = '[defaults]\nmask = ["secret*"]\n[tables."public.items"]\nname = "name"\n'
    track("create table items (id int primary key, name text, secret_key text)", toml)
    conn.execute(f"alter table items owner to {APP_ROLE}")
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.execute(PLANTED_FOR_PRIVILEGED)
        app.execute("insert into items values (1, 'Bolt', 'sk-1'), (2, 'Nut', 'sk-2')")
    (tmp_path / "auditdb.toml").write_text(toml)
    base = ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml")]
    for args in (
        ["status"],
        ["doctor"],
        ["apply"],
        ["install"],
        ["log"],
        ["log", "--format", "json"],
        ["log", "--format", "csv", "--search", "Bolt"],
        ["show", "1"],
        ["history", "Items", "1"],
        ["export", "--output", str(tmp_path / "x.jsonl"), "--format", "jsonl"],
        ["export", "--output", str(tmp_path / "x.csv")],
        ["partitions", "list"],
        ["partitions", "ensure"],
        ["partitions", "prune", "--older-than", "0", "--export-dir", str(tmp_path / "archive")],
        ["worker", "--once"],
        ["grant", APP_ROLE, "--writer"],
        ["revoke", APP_ROLE, "--writer"],
    ):
        result = CliRunner().invoke(cli, [*base, *args])
        assert result.exit_code in (0, 1), (args, result.output)
    hits = conn.execute("select distinct who, what from public.planted_hits").fetchall()
    assert [h for h in hits if h[0] != APP_ROLE] == []

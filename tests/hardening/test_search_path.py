"""search_path hijack: objects planted in public and pg_temp never divert or forge a write."""

from __future__ import annotations

from typing import Any

import psycopg

import auditdb
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

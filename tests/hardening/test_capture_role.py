"""Issue 12, item 1: least privilege behind capture. auditdb_capture may append entries (never
choose their id, time, transaction or database user) and read the registry: nothing else, not
even change its own functions. Every function is executable only by whom it is granted to, and
every SECURITY DEFINER function says why it cannot run caller-controlled code."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Any

import psycopg
import pytest

from auditdb.config import parse_config
from auditdb.install import DEFINITIONS
from auditdb.triggers import apply
from tests.fix_db import scalar

ATTEMPTS = {
    "choose the time": "insert into auditdb.log (occurred_at, action) values ('2000-01-01', 'FORGED')",
    "choose the database user": "insert into auditdb.log (action, db_user) values ('FORGED', 'someone')",
    "choose the transaction": "insert into auditdb.log (action, txid) values ('FORGED', 1)",
    "choose the id": "insert into auditdb.log (action, id) values ('FORGED', 1)",
    "read the log": "select count(*) from auditdb.log",
    "delete entries": "delete from auditdb.log",
    "change entries": "update auditdb.log set action = 'FORGED'",
    "read the queue": "select count(*) from auditdb.event_queue",
    "rewrite the registry": "update auditdb.tracked_tables set config = '{{}}'",
    "write settings": "update auditdb.settings set value = '[]'",
    "begin maintenance": "select auditdb.begin_maintenance()",
    "disable a guard": "alter table auditdb.log disable trigger log_append_only",
    "replace its capture function": "create or replace function auditdb.{fn}() returns trigger language plpgsql "
    "as $$ begin return null; end $$",
    "make its capture function run as the caller": "alter function auditdb.{fn}() security invoker",
    "reset its capture function's settings": "alter function auditdb.{fn}() reset all",
    "drop its capture function": "drop function auditdb.{fn}() cascade",
    "drop the generic capture": "drop function auditdb.capture_generic()",
}


@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_the_capture_role_may_only_append(attempt: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table items (id int primary key, v int)")
    apply(conn, parse_config(tomllib.loads('[tables."public.items"]\n')))
    fn = scalar(conn, "select function_name from auditdb.tracked_tables")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("set local role auditdb_capture")
        conn.execute(ATTEMPTS[attempt].format(fn=fn))
    assert scalar(conn, "select count(*) from auditdb.log where action = 'FORGED'") == 0
    assert scalar(conn, "select prosecdef from pg_proc where proname = %s", (fn,)) is True


def test_what_the_capture_role_appends_carries_the_logs_own_facts(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_capture")
        conn.execute("insert into auditdb.log (action, actor_id) values ('APPENDED', 'a1')")
    row = conn.execute("select db_user, txid > 0, occurred_at <= now() from auditdb.log").fetchone()
    assert row == (conn.info.user, True, True)


def test_no_function_is_executable_by_public_and_acls_are_explicit(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table items (id int primary key, v int)")
    apply(conn, parse_config(tomllib.loads('[tables."public.items"]\n')))
    loose = conn.execute(
        """select p.oid::regprocedure::text from pg_proc p
            where p.pronamespace = 'auditdb'::regnamespace
              and (p.proacl is null or has_function_privilege('public', p.oid, 'execute'))"""
    ).fetchall()
    assert loose == []
    defaults = {
        r[0]
        for r in conn.execute(
            """select defaclrole::regrole::text from pg_default_acl
                where defaclobjtype = 'f' and defaclnamespace = 0"""
        )
    }
    assert {"auditdb_owner", "auditdb_capture"} <= defaults


def _definer_comments(text: str) -> list[tuple[str, bool]]:
    """(function, commented) for each `security definer` function in an SQL source."""
    found = []
    for match in re.finditer(r"create or replace function ([^(]+)\(.*?\$(\w*)\$", text, re.S):
        head = text[match.start() : match.end()]
        if "security definer" not in head or "%" in match.group(1):
            continue  # not a definition (a format string that makes one: the generic body's copy)
        before = text[: match.start()].rstrip().splitlines()
        found.append((match.group(1), bool(before) and before[-1].startswith("-- definer:")))
    return found


def test_every_security_definer_function_says_why_it_runs_no_caller_code(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table items (id int primary key, v int)")
    apply(conn, parse_config(tomllib.loads('[tables."public.items"]\n')))
    root = resources.files("auditdb.sql")
    sources = [(root / "definitions" / f"{name}.sql").read_text() for name in DEFINITIONS]
    sources.append((root / "templates" / "capture.sql.j2").read_text())
    found = [f for text in sources for f in _definer_comments(text)]
    assert found and [name for name, commented in found if not commented] == []
    # And no definer function in the database comes from anywhere else (generated ones are the
    # template's; event-trigger functions belong to the installing superuser).
    named = {name.split(".")[-1].strip('"') for name, _ in found}
    definers = {
        r[0]
        for r in conn.execute("select proname from pg_proc where pronamespace = 'auditdb'::regnamespace and prosecdef")
    }
    generated = {d for d in definers if d.startswith("auditdb_capture_")}  # the template's
    assert generated and definers - named - generated == set()

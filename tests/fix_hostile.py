"""Fixtures: an application role that owns hostile types, and a probe that records who runs its code.

The application role (which owns its tables and types, as one running its own migrations does)
gives every kind of type it can create casts to json, jsonb and text (implicit), an operator,
a domain CHECK and an index predicate, each calling public.auditdb_probe(tag). The probe
records current_user and session_user, in a table when it may write, else in the session's
`probe.hits` setting (from read-only contexts). Tests drive capture, apply, the DDL watchers,
the worker and the CLI, then assert the probe only ever ran as the application role.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.fix_db import APP_ROLE

HOSTILE_SQL = r"""
create table public.probe_hits (who text, session_login text, tag text, at timestamptz default clock_timestamp());
grant insert, select on public.probe_hits to public;
create function public.auditdb_probe(tag text) returns void language plpgsql as $$
begin
    begin
        insert into public.probe_hits (who, session_login, tag) values (current_user, session_user, tag);
    exception when others then
        perform set_config('probe.hits',
                           concat(current_setting('probe.hits', true), current_user, ':', tag, ';'), false);
    end;
end $$;

create type public.mood as enum ('happy', 'sad');
create type public.span as range (subtype = float8);
create type public.pair as (a int, m public.mood);
create domain public.mood_d as public.mood;
create function public.checked_ok(v text) returns boolean language plpgsql as $$
begin perform public.auditdb_probe('domain check'); return true; end $$;
create domain public.checked as text check (public.checked_ok(value));

create function public.mood_json(public.mood) returns json language plpgsql as $$
begin perform public.auditdb_probe('cast mood to json'); return to_json('FORGED'::text); end $$;
create cast (public.mood as json) with function public.mood_json(public.mood);
create function public.mood_jsonb(public.mood) returns jsonb language plpgsql as $$
begin perform public.auditdb_probe('cast mood to jsonb'); return to_jsonb('FORGED'::text); end $$;
create cast (public.mood as jsonb) with function public.mood_jsonb(public.mood);
create function public.mood_text(public.mood) returns text language plpgsql as $$
begin perform public.auditdb_probe('cast mood to text'); return 'FORGED'; end $$;
create cast (public.mood as text) with function public.mood_text(public.mood) as implicit;
create function public.mood_eq(public.mood, public.mood) returns boolean language plpgsql as $$
begin perform public.auditdb_probe('operator mood = mood'); return false; end $$;
create operator public.= (leftarg = public.mood, rightarg = public.mood, function = public.mood_eq);

create function public.span_json(public.span) returns json language plpgsql as $$
begin perform public.auditdb_probe('cast span to json'); return to_json('FORGED'::text); end $$;
create cast (public.span as json) with function public.span_json(public.span);
create function public.span_text(public.span) returns text language plpgsql as $$
begin perform public.auditdb_probe('cast span to text'); return 'FORGED'; end $$;
create cast (public.span as text) with function public.span_text(public.span) as implicit;

create function public.pair_json(public.pair) returns json language plpgsql as $$
begin perform public.auditdb_probe('cast pair to json'); return to_json('FORGED'::text); end $$;
create cast (public.pair as json) with function public.pair_json(public.pair);
create function public.pair_text(public.pair) returns text language plpgsql as $$
begin perform public.auditdb_probe('cast pair to text'); return 'FORGED'; end $$;
create cast (public.pair as text) with function public.pair_text(public.pair) as implicit;

-- A predicate the planner folds while planning any query on a table with this index.
create function public.probe_true() returns boolean language plpgsql immutable as $$
begin perform public.auditdb_probe('index predicate'); return true; end $$;

create table public.things (
    id int primary key, name text, m public.mood, ms public.mood[], s public.span, p public.pair,
    c public.checked, md public.mood_d, secret text
);
create table public.parted (id int primary key, m public.mood) partition by range (id);
create table public.parted_1 partition of public.parted for values from (0) to (100);
"""

HOSTILE_TOML = """
[defaults]
mask = ["secret"]

[tables."public.things"]
name = "name || ' (' || m || ')'"
rules = [{ on = "UPDATE", when = "OLD.m IS DISTINCT FROM NEW.m AND NEW.m = 'sad'", action = "MOOD_DROPPED" }]

[tables."public.parted"]
"""

ROW = "insert into things values (1, 'Ann', 'happy', '{happy,sad}', '[1.5,2)', '(7,sad)', 'ok', 'sad', 's3cr3t-value')"


@dataclass
class Hostile:
    """The probe's findings."""

    conn: psycopg.Connection[Any]

    def hits(self, *sessions: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
        """Every (role, login, tag) the probe recorded, from its table and the given sessions' settings."""
        found = [
            (str(w), str(s), str(t))
            for w, s, t in self.conn.execute("select who, session_login, tag from public.probe_hits order by at")
        ]
        for session in sessions:
            row = session.execute("select current_setting('probe.hits', true)").fetchone()
            for hit in filter(None, (row[0] if row and row[0] else "").split(";")):
                who, tag = hit.split(":", 1)
                found.append((who, "?", tag))
        return found

    def foreign_hits(self, *sessions: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
        """What the probe recorded running as any role but the application's."""
        return [h for h in self.hits(*sessions) if h[0] != APP_ROLE]

    def clear(self) -> None:
        self.conn.execute("delete from public.probe_hits")


@pytest.fixture
def hostile(conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]) -> Iterator[Hostile]:
    """The hostile types, tables and probe, created by (and owned by) the application role."""
    conn.execute(f"grant auditdb_writer to {APP_ROLE}")
    try:
        app_conn.execute(HOSTILE_SQL)
        yield Hostile(conn)
    finally:
        conn.execute(f"revoke auditdb_writer from {APP_ROLE}")

"""Capture tells the truth about values: a change that compares equal is still a change, entries are
stamped when written, and no session setting changes what an entry says."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_capture import Track, entries

SCHEMA = """
create type mood as enum ('happy', 'sad');
create table things (id int primary key, n numeric, f float8, iv interval, j jsonb, t text,
                     moods mood[], b bytea, m money, hits int, label text)
"""
TOML = '[defaults]\nignore = ["hits"]\n[tables."public.things"]\nname = "label"\n'


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize(
    ("column", "before", "after"),
    [
        ("n", "1.0", "1.00"),
        ("f", "0", "-0"),
        ("iv", "1 day", "24 hours"),
        ("j", '{"a": 1.0}', '{"a": 1.00}'),
    ],
)
def test_a_change_to_an_equal_but_different_value_is_logged(
    generic: bool, column: str, before: str, after: str, conn: psycopg.Connection[Any], track: Track
) -> None:
    track(SCHEMA, TOML)
    if generic:
        conn.execute("alter table things add column x int; alter table things drop column x")
    col = sql.Identifier(column)
    conn.execute(sql.SQL("insert into things (id, {}) values (1, %s)").format(col), (before,))
    conn.execute(sql.SQL("update things set {} = %s").format(col), (after,))
    update = entries(conn, "action = 'UPDATE'")
    assert len(update) == 1 and set(update[0]["changes"]) == {column}


def test_entries_are_stamped_when_written_not_when_the_statement_began(
    conn: psycopg.Connection[Any], track: Track
) -> None:
    track(SCHEMA, TOML)
    conn.execute(
        "do $$ begin insert into things (id) values (1); perform pg_sleep(1.1); "
        "update things set label = 'late'; end $$"
    )
    create, update = entries(conn)
    assert (update["occurred_at"] - create["occurred_at"]).total_seconds() >= 1


def test_no_session_setting_changes_what_an_entry_says(conn: psycopg.Connection[Any], track: Track) -> None:
    track(SCHEMA, TOML)
    with conn.transaction():
        conn.execute("set local array_nulls = off; set local bytea_output = 'escape'; set local lc_monetary = 'C'")
        conn.execute("insert into things (id, moods, b, m) values (1, array['happy', null]::mood[], '\\x00ff', 12.5)")
    [create] = entries(conn)
    assert create["changes"]["moods"] == {"new": ["happy", None]}
    assert create["changes"]["b"] == {"new": "\\x00ff"}
    assert create["changes"]["m"] == {"new": "$12.50"}


def test_a_column_renamed_to_an_ignored_name_is_still_compared(conn: psycopg.Connection[Any], track: Track) -> None:
    track(SCHEMA, TOML)
    conn.execute("insert into things (id, label) values (1, 'a')")
    conn.execute("alter table things rename column label to hits_label")
    conn.execute("alter table things rename column hits to hits_old")  # the ignored one, renamed away
    conn.execute("alter table things rename column hits_label to hits")  # now named like the ignore glob
    conn.execute("update things set hits = 'b', hits_old = 5")
    [update] = entries(conn, "action = 'UPDATE'")
    assert set(update["changes"]) == {"hits"}  # the renamed label; the ignored column stays ignored

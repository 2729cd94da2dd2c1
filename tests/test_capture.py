"""Capture semantics: what each kind of change writes to auditdb.log."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.fix_capture import Track, entries

ITEMS = """
create table items (
    id int primary key, name text, qty int, tenant_id text, project text,
    password text, api_token text, is_deleted boolean default false, gone_at timestamptz,
    updated_at timestamptz
);
"""
ITEMS_TOML = """
[defaults]
mask = ["password*"]
mask_last4 = ["*token*"]
ignore = ["updated_at"]
tenant = "tenant_id"

[tables."public.items"]
entity_type = "Item"
name = "name"
project = "project"
soft_delete = "is_deleted"
"""


@pytest.fixture
def items(conn: psycopg.Connection[Any], track: Track) -> psycopg.Connection[Any]:
    track(ITEMS, ITEMS_TOML)
    return conn


def test_insert_is_create_with_every_column_new(items: psycopg.Connection[Any]) -> None:
    items.execute("insert into items (id, name, qty, tenant_id, project) values (1, 'Bolt', 5, 't1', 'p1')")
    [e] = entries(items)
    assert e["action"] == "CREATE"
    assert e["entity_type"] == "Item" and e["entity_id"] == "1" and e["entity_name"] == "Bolt"
    assert e["table_name"] == "public.items"
    assert e["changes"] == {
        "id": {"new": 1},
        "name": {"new": "Bolt"},
        "qty": {"new": 5},
        "tenant_id": {"new": "t1"},
        "project": {"new": "p1"},
        "password": {"new": None},
        "api_token": {"new": None},
        "is_deleted": {"new": False},
        "gone_at": {"new": None},
        "updated_at": {"new": None},
    }
    assert e["metadata"] == {}
    assert e["tenant_id"] == "t1" and e["project_id"] == "p1"


def test_update_logs_only_changed_columns_and_delete_every_old_value(items: psycopg.Connection[Any]) -> None:
    items.execute("insert into items (id, name, qty) values (1, 'Bolt', 5)")
    items.execute("update items set qty = 6, name = name where id = 1")
    items.execute("delete from items where id = 1")
    create, update, delete = entries(items)
    assert update["action"] == "UPDATE" and update["changes"] == {"qty": {"old": 5, "new": 6}}
    assert delete["action"] == "DELETE"
    assert delete["changes"]["qty"] == {"old": 6} and delete["changes"]["name"] == {"old": "Bolt"}
    assert set(delete["changes"]) == set(create["changes"])
    assert all(set(v) == {"old"} for v in delete["changes"].values())


def test_a_whole_row_is_stored_once_with_its_side_and_read_as_before(items: psycopg.Connection[Any]) -> None:
    # CREATE and DELETE store the row as it is, with its side under "" (which no column can be
    # named), not each column wrapped; readers show both shapes the same (release 0008).
    from auditdb.query import JsonText, split_changes

    items.execute("insert into items (id, name, qty) values (1, 'Bolt', 5)")
    items.execute("delete from items where id = 1")
    stored = [r[0] for r in items.execute("select changes from auditdb.log where table_name is not null order by id")]
    assert stored[0] == {
        "": "new", "id": 1, "name": "Bolt", "qty": 5, "tenant_id": None, "project": None, "password": None,
        "api_token": None, "is_deleted": False, "gone_at": None, "updated_at": None,
    }  # fmt: skip
    assert stored[1][""] == "old" and stored[1]["name"] == "Bolt" and len(stored[1]) == len(stored[0])
    older = JsonText('{"id": {"new": 1}, "name": {"new": "Bolt"}}')
    newer = JsonText('{"": "new", "id": 1, "name": "Bolt"}')
    assert (
        split_changes(newer)
        == split_changes(older)
        == {
            "id": {"new": JsonText("1")},
            "name": {"new": JsonText('"Bolt"')},
        }
    )


def test_noop_and_ignored_only_updates_write_nothing(items: psycopg.Connection[Any]) -> None:
    items.execute("insert into items (id, name, qty) values (1, 'Bolt', 5), (2, 'Nut', 1)")
    before = len(entries(items))
    items.execute("update items set qty = qty")
    items.execute("update items set updated_at = now()")
    items.execute("update items set qty = 7 where id = -1")
    assert len(entries(items)) == before
    items.execute("update items set updated_at = now(), qty = 8 where id = 1")
    [e] = entries(items, "action = 'UPDATE'")
    assert e["changes"] == {"qty": {"old": 5, "new": 8}}


def test_multi_row_statements_are_bulk_with_rows_and_one_txid(items: psycopg.Connection[Any]) -> None:
    items.execute("insert into items (id, name, qty) select g, 'n' || g, g from generate_series(1, 3) g")
    items.execute("update items set qty = qty + 1 where id <= 2")
    items.execute("delete from items")
    rows = entries(items)
    assert [r["action"] for r in rows] == ["BULK_CREATE"] * 3 + ["BULK_UPDATE"] * 2 + ["BULK_DELETE"] * 3
    assert [r["metadata"]["rows"] for r in rows] == [3, 3, 3, 2, 2, 3, 3, 3]
    assert len({r["txid"] for r in rows[:3]}) == 1
    assert sorted(r["entity_id"] for r in rows[3:5]) == ["1", "2"]


def test_soft_delete_is_logged_as_delete(conn: psycopg.Connection[Any], track: Track) -> None:
    conn.execute(ITEMS)
    conn.execute("create table stamped (id int primary key, gone_at timestamptz)")
    track("", ITEMS_TOML + '\n[tables."public.stamped"]\nsoft_delete = "gone_at"\n')
    conn.execute("insert into items (id, name) values (1, 'a'), (2, 'b'), (3, 'c')")
    conn.execute("insert into stamped values (1, null)")
    conn.execute("update items set is_deleted = true where id = 1")
    conn.execute("update items set is_deleted = true where id in (2, 3)")
    conn.execute("update items set is_deleted = false where id = 1")
    conn.execute("update stamped set gone_at = now()")
    conn.execute("update stamped set gone_at = now() + interval '1 day'")
    rows = entries(conn, "action not like '%CREATE'")
    assert [(r["entity_type"], r["entity_id"], r["action"]) for r in rows] == [
        ("Item", "1", "DELETE"),
        ("Item", "2", "BULK_DELETE"),
        ("Item", "3", "BULK_DELETE"),
        ("Item", "1", "UPDATE"),
        ("Stamped", "1", "DELETE"),
        ("Stamped", "1", "UPDATE"),
    ]
    assert rows[0]["changes"] == {"is_deleted": {"old": False, "new": True}}


def test_masking_never_reveals_a_value(items: psycopg.Connection[Any]) -> None:
    secret, token, short = "hunter2-Secret!", "tok_abcdefghijkl9f2c", "tok_1234"
    items.execute("insert into items (id, password, api_token) values (1, %s, %s)", (secret, token))
    items.execute("update items set password = %s, api_token = %s", (secret + "x", short))
    items.execute("update items set password = null")
    items.execute("delete from items")
    create, first, cleared, delete = entries(items)
    assert create["changes"]["password"] == {"new": "***"}
    assert create["changes"]["api_token"] == {"new": "***9f2c"}
    assert first["changes"] == {"password": {"old": "***", "new": "***"}, "api_token": {"old": "***9f2c", "new": "***"}}
    assert cleared["changes"] == {"password": {"old": "***", "new": None}}
    assert delete["changes"]["password"] == {"old": None} and delete["changes"]["api_token"] == {"old": "***"}
    dump = items.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone()
    assert dump is not None
    for value in (secret, secret + "x", token, short, "abcdefghijkl"):
        assert value not in dump[0]


def test_context_and_row_values_fill_the_entry(items: psycopg.Connection[Any]) -> None:
    with items.transaction():
        items.execute("""select auditdb.set_context(actor_id => 'u42', actor_email => 'ann@example.com',
                         actor_name => 'Ann', ip => '203.0.113.7', user_agent => 'UA/1', tenant_id => 'ctx-t',
                         project_id => 'ctx-p', request_id => 'req-9')""")
        items.execute("insert into items (id, name, tenant_id, project) values (1, 'row', 'row-t', 'row-p')")
        items.execute("insert into items (id, name) values (2, 'ctx')")
    row_values, ctx_values = entries(items)
    assert (row_values["tenant_id"], row_values["project_id"]) == ("row-t", "row-p")
    assert (ctx_values["tenant_id"], ctx_values["project_id"]) == ("ctx-t", "ctx-p")
    for e in (row_values, ctx_values):
        assert (e["actor_id"], e["actor_email"], e["actor_name"]) == ("u42", "ann@example.com", "Ann")
        assert str(e["ip"]) == "203.0.113.7" and e["user_agent"] == "UA/1"
        assert e["metadata"]["request_id"] == "req-9"
        assert e["db_user"] == items.info.user
    items.execute("insert into items (id) values (3)")
    [system] = entries(items, "entity_id = '3'")
    assert system["actor_id"] is None and system["ip"] is None and system["metadata"] == {}


def test_db_user_is_the_session_user(items: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]) -> None:
    items.execute("grant all on items to auditdb_test_app")
    app_conn.execute("insert into items (id) values (1)")
    items.execute("set role auditdb_test_app")
    items.execute("insert into items (id) values (2)")
    items.execute("reset role")
    assert [e["db_user"] for e in entries(items)] == ["auditdb_test_app", items.info.user]


def test_composite_key_is_a_json_object(conn: psycopg.Connection[Any], track: Track) -> None:
    track(
        "create table pairs (a int, b text, v int, primary key (a, b))",
        '[tables."public.pairs"]\nentity_type = "Pair"\n',
    )
    conn.execute("insert into pairs values (1, 'x', 0)")
    conn.execute("update pairs set b = 'y'")
    create, update = entries(conn)
    assert create["entity_id"] == '{"a": 1, "b": "x"}'
    assert update["entity_id"] == '{"a": 1, "b": "y"}'
    assert update["metadata"]["previous_id"] == '{"a": 1, "b": "x"}'


def test_rollback_leaves_nothing(items: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero), items.transaction():
        items.execute("insert into items (id) values (1)")
        items.execute("select 1 / 0")
    with items.transaction():
        items.execute("insert into items (id) values (2)")
        with pytest.raises(psycopg.errors.UniqueViolation), items.transaction():
            items.execute("update items set qty = 1")
            items.execute("insert into items (id) values (2)")
    assert [(e["action"], e["entity_id"]) for e in entries(items)] == [("CREATE", "2")]


def test_session_time_zone_changes_nothing_stored(items: psycopg.Connection[Any]) -> None:
    items.execute("set timezone = 'Asia/Kathmandu'")
    items.execute("set datestyle = 'SQL, DMY'")
    items.execute("insert into items (id, gone_at) values (1, '2026-01-02 03:04:05+00')")
    items.execute("reset datestyle")
    [e] = entries(items)
    assert e["changes"]["gone_at"] == {"new": "2026-01-02T03:04:05+00:00"}


def test_types_without_equality_are_compared_as_text(conn: psycopg.Connection[Any], track: Track) -> None:
    track("create table docs (id int primary key, body json, pos point)", '[tables."public.docs"]\n')
    conn.execute("""insert into docs values (1, '{"a": 1}', '(1,2)')""")
    conn.execute("""update docs set body = '{"a": 1}'""")  # same text: nothing changed
    conn.execute("""update docs set body = '{"a": 2}', pos = '(3,4)'""")
    create, update = entries(conn)
    assert create["changes"]["body"] == {"new": {"a": 1}}
    assert update["changes"] == {"body": {"old": {"a": 1}, "new": {"a": 2}}, "pos": {"old": "(1,2)", "new": "(3,4)"}}

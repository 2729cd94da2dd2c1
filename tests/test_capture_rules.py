"""Rules give changes their semantic actions; require_actor refuses anonymous changes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from auditdb.config import Config
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE


def test_example_rules_give_every_semantic_action(conn: psycopg.Connection[Any], example: Config) -> None:
    conn.execute("""
        insert into users (id, tenant_id, email, name, password_hash) values (1, 't1', 'ann@example.com', 'Ann', 'h1');
        insert into projects (id, tenant_id, name) values (1, 't1', 'Web');
        update users set password_hash = 'h2' where id = 1;
        update users set role = 'ADMIN' where id = 1;
        insert into project_permissions values (1, 1, 't1', 'VIEW');
        delete from project_permissions;
        insert into api_tokens (id, tenant_id, user_id, label, token_hash, token_prefix)
            values (1, 't1', 1, 'CI', 'hash-aaaa-1111', 'tp_1');
        update api_tokens set token_hash = 'hash-bbbb-2222';
        update api_tokens set revoked_at = now();
        delete from api_tokens;
        insert into app_config values ('theme', 't1', '"dark"');
        insert into sso_providers (tenant_id, name, kind, client_secret) values ('t1', 'Okta', 'SAML', 's3cr3t-value');
    """)
    actions = [r["action"] for r in entries(conn, "action not in ('CREATE')")]
    assert actions == [
        "PASSWORD_CHANGED",
        "ROLE_CHANGED",
        "PERMISSION_GRANT",
        "PERMISSION_REVOKE",
        "API_KEY_CREATED",
        "API_KEY_REGENERATED",
        "API_KEY_REVOKED",
        "API_KEY_DELETED",
        "SYSTEM_CONFIG_CHANGED",
        "SSO_CONFIG_CHANGED",
    ]
    [password] = entries(conn, "action = 'PASSWORD_CHANGED'")
    assert password["changes"] == {"password_hash": {"old": "***", "new": "***"}}
    [permission] = entries(conn, "action = 'PERMISSION_GRANT'")
    assert permission["entity_id"] == '{"user_id": 1, "project_id": 1}' and permission["project_id"] == "1"
    dump = conn.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone()
    assert dump is not None
    for secret in ("h1", "h2", "hash-aaaa", "hash-bbbb", "s3cr3t-value"):
        assert f'"{secret}' not in dump[0]


def test_every_example_table_is_tracked(conn: psycopg.Connection[Any], example: Config) -> None:
    tracked = {r[0] for r in conn.execute("select table_name from auditdb.tracked_tables")}
    assert len(tracked) == 19
    assert {t.entity_type for t in example.tables} >= {
        "TestCase",
        "TestRun",
        "TestResult",
        "Session",
        "SharedStep",
        "Project",
        "Milestone",
        "Issue",
        "Tag",
        "User",
        "Group",
        "Permission",
        "ApiToken",
        "SsoProvider",
        "EmailDomain",
        "AppConfig",
        "Comment",
        "Attachment",
    }


REQUIRE = """
[defaults]
require_actor = true
system_roles = ["auditdb_test_migrator"]
[tables."public.kv"]
"""


@pytest.fixture
def required(conn: psycopg.Connection[Any], track: Track) -> psycopg.Connection[Any]:
    conn.execute("""do $$ begin
        if not exists (select from pg_roles where rolname = 'auditdb_test_migrator') then
            create role auditdb_test_migrator nologin;
        end if; end $$""")
    track("create table kv (k text primary key, v int)", REQUIRE)
    conn.execute(f"grant all on kv to {APP_ROLE}")
    return conn


def test_require_actor_refuses_changes_without_an_actor(
    required: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        app_conn.execute("insert into kv values ('a', 1)")
    assert "no actor in the session context" in str(caught.value)
    # A superuser is not a system role by being a superuser.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        required.execute("insert into kv values ('a', 1)")
    required.execute(f"grant auditdb_writer to {APP_ROLE}")
    try:
        with app_conn.transaction():
            app_conn.execute("select auditdb.set_context(actor_id => 'u1')")
            app_conn.execute("insert into kv values ('a', 1)")
    finally:
        required.execute(f"revoke auditdb_writer from {APP_ROLE}")
    # Statements that change nothing are not refused.
    app_conn.execute("update kv set v = 2 where k = 'none'")
    assert [(e["action"], e["actor_id"]) for e in entries(required)] == [("CREATE", "u1")]


def test_system_roles_may_change_rows_without_an_actor(
    required: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    required.execute(f"grant auditdb_test_migrator to {APP_ROLE}")
    try:
        app_conn.execute("insert into kv values ('m', 1)")
    finally:
        required.execute(f"revoke auditdb_test_migrator from {APP_ROLE}")
    [e] = entries(required)
    assert e["actor_id"] is None and e["db_user"] == APP_ROLE


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


HOSTILE_TABLE = 'Ünïcødé tâble with "quotes" and spaces — 63 bytes exactly?'


def test_hostile_names_render_parse_and_run(conn: psycopg.Connection[Any], track: Track) -> None:
    table = HOSTILE_TABLE.encode()[:63].decode("utf-8", "ignore")
    column = ('Sélect "from" where ' + "é" * 40).encode()[:63].decode("utf-8", "ignore")
    assert len(column.encode()) >= 62
    schema = "Odd Schema"
    conn.execute(psycopg.sql.SQL("create schema {}").format(psycopg.sql.Identifier(schema)))
    conn.execute(
        psycopg.sql.SQL('create table {} ({} int primary key, {} text, "order" text, "select" int)').format(
            psycopg.sql.Identifier(schema, table), psycopg.sql.Identifier("user"), psycopg.sql.Identifier(column)
        )
    )
    key = psycopg.sql.Identifier(schema, table).as_string()
    name = '"order" || coalesce(' + psycopg.sql.Identifier(column).as_string() + ", '')"
    when = _toml('NEW."select" > OLD."select"')
    toml = (
        f'[tables.{_toml(key)}]\nentity_type = "Odd"\nname = {_toml(name)}\n'
        f'rules = [{{ on = "UPDATE", when = {when}, action = "BUMPED" }}]\n'
    )
    track("", toml)
    conn.execute(
        psycopg.sql.SQL("insert into {} values (1, 'x''y', 'o', 1)").format(psycopg.sql.Identifier(schema, table))
    )
    conn.execute(psycopg.sql.SQL('update {} set "select" = 2').format(psycopg.sql.Identifier(schema, table)))
    create, bumped = entries(conn)
    assert create["entity_name"] == "ox'y" and create["changes"][column] == {"new": "x'y"}
    assert create["changes"]["user"] == {"new": 1}
    assert bumped["action"] == "BUMPED"
    assert create["table_name"] == f'"Odd Schema"."{table.replace(chr(34), chr(34) * 2)}"'


@pytest.mark.parametrize("first", ["PASSWORD_CHANGED", "ROLE_CHANGED"])
def test_the_first_matching_rule_wins_in_both_captures(conn: psycopg.Connection[Any], track: Track, first: str) -> None:
    """An UPDATE matching two rules is logged once, with the action of the rule listed first, by the
    generated capture and by the generic one a schema change falls back to."""
    rules = {
        "PASSWORD_CHANGED": '{ on = "UPDATE", when = "OLD.pw IS DISTINCT FROM NEW.pw", action = "PASSWORD_CHANGED" }',
        "ROLE_CHANGED": '{ on = "UPDATE", when = "OLD.role IS DISTINCT FROM NEW.role", action = "ROLE_CHANGED" }',
    }
    ordered = [rules[first], *(r for a, r in rules.items() if a != first)]
    track(
        "create table accounts (id int primary key, pw text, role text)",
        f'[tables."public.accounts"]\nmask = ["pw"]\nrules = [{", ".join(ordered)}]\n',
    )
    conn.execute("insert into accounts values (1, 'h1', 'USER')")
    conn.execute("update accounts set pw = 'h2', role = 'ADMIN' where id = 1")
    # A column added and dropped: capture goes generic until the next apply.
    conn.execute("alter table accounts add column spare int")
    conn.execute("alter table accounts drop column spare")
    bodies = conn.execute(
        "select distinct pg_catalog.obj_description(tgfoid, 'pg_proc') from pg_trigger"
        " where tgrelid = 'accounts'::regclass and not tgisinternal"
    ).fetchall()
    assert bodies == [("auditdb:generic",)], bodies
    conn.execute("update accounts set pw = 'h3', role = 'USER' where id = 1")
    updates = [e["action"] for e in entries(conn, "action not in ('CREATE', 'AUDIT_CHANGED')")]
    assert updates == [first, first]

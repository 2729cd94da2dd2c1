"""Issue 12, item 8: a masked value never shows, wherever renames move it (entity name, id,
tenant, project, rules): the generic capture follows columns by number, not by name."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.fix_capture import Track, audit_entries, entries

SCHEMA = """
create table providers (
    id int primary key, name text, client_secret text, tenant_id text, project text, state text
)
"""
TOML = """
[defaults]
mask = ["*secret*"]
tenant = "tenant_id"
[tables."public.providers"]
name = "name"
project = "project"
rules = [{ on = "UPDATE", when = "OLD.state IS DISTINCT FROM NEW.state AND NEW.state = 'x'", action = "STATE_X" }]
"""


def _dump(conn: psycopg.Connection[Any]) -> str:
    return str(conn.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone())


def test_a_secret_renamed_into_a_shown_columns_name_stays_masked(conn: psycopg.Connection[Any], track: Track) -> None:
    track(SCHEMA, TOML)
    conn.execute("alter table providers rename column name to provider_name")
    conn.execute("alter table providers rename column client_secret to name")
    conn.execute("insert into providers values (1, 'Acme', 'sk-live-SECRET', 't1', 'p1', 'a')")
    conn.execute("update providers set name = 'sk-live-SECRET2', state = 'x'")
    create, update = entries(conn)
    assert create["entity_name"] is None and "name" in create["metadata"]["capture_warning"]
    assert create["changes"]["name"] == {"new": "***"} and create["changes"]["provider_name"] == {"new": "Acme"}
    assert update["changes"]["name"] == {"old": "***", "new": "***"}
    assert "SECRET" not in _dump(conn)


def test_secrets_renamed_into_the_tenant_project_and_rule_columns_stay_hidden(
    conn: psycopg.Connection[Any], track: Track
) -> None:
    track(SCHEMA, TOML)
    conn.execute("alter table providers rename column tenant_id to old_tenant")
    conn.execute("alter table providers rename column project to old_project")
    conn.execute("alter table providers rename column state to old_state")
    conn.execute("alter table providers rename column client_secret to tenant_id")
    conn.execute("alter table providers add column project text, add column state text")
    with conn.transaction():
        conn.execute("select auditdb.set_context(tenant_id => 'ctx-tenant', project_id => 'ctx-project')")
        conn.execute(
            "insert into providers (id, name, tenant_id, old_tenant, old_project, state) "
            "values (1, 'Acme', 'sk-live-SECRET', 't9', 'p9', 'x')"
        )
        conn.execute("update providers set state = 'y', tenant_id = 'sk-live-SECRET3'")
    create, update = entries(conn)
    # Tenant and project follow their columns by number (now old_tenant, old_project), never the
    # secret that took the name tenant_id.
    assert create["tenant_id"] == "t9" and create["project_id"] == "p9"
    assert update["action"] == "UPDATE"  # the rule was written for the old `state`: skipped, not retargeted
    assert "rule STATE_X" in update["metadata"]["capture_warning"]
    assert "SECRET" not in _dump(conn)


def test_a_rule_over_a_column_whose_collation_changed_is_skipped(conn: psycopg.Connection[Any], track: Track) -> None:
    # A collation decides what `<` and even `=` mean (a nondeterministic one ignores case): the
    # rule was checked against the column as it was, so it no longer runs on it.
    track(SCHEMA, TOML)
    conn.execute('alter table providers alter column state type text collate "POSIX"')
    conn.execute("insert into providers values (1, 'Acme', 's', 't1', 'p1', 'a')")
    conn.execute("update providers set state = 'x'")
    changed = audit_entries(conn, "action = 'AUDIT_CHANGED' and metadata->>'operation' <> 'apply'")
    assert [e["metadata"]["operation"] for e in changed] == ["schema_changed"]
    _, update = entries(conn)
    assert update["action"] == "UPDATE" and "rule STATE_X" in update["metadata"]["capture_warning"]
    assert update["changes"]["state"] == {"old": "a", "new": "x"}

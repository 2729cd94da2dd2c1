"""Tenancy and admin-only reading, enforced by row-level security; grant/revoke are logged."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_capture import audit_entries
from tests.fix_roles import MakeRole
from tests.fix_server import Server


@pytest.fixture
def tenants_log(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute("""insert into auditdb.log (action, entity_type, tenant_id)
                        select 'LOGIN', 'User', t from unnest(array['t1', 't1', 't2', 't3']) t""")


def _visible(pg_server: Server, dbname: str, role: str, setup: str = "") -> list[str]:
    with psycopg.connect(pg_server.dsn(dbname, user=role), autocommit=True) as c:
        if setup:
            c.execute(setup)
        return sorted(r[0] for r in c.execute("select tenant_id from auditdb.log where action = 'LOGIN'"))


def test_admin_sees_all(dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole) -> None:
    role = make_role()
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--admin"]).exit_code == 0
    assert _visible(pg_server, dbname, role) == ["t1", "t1", "t2", "t3"]


def test_bound_viewer_sees_its_tenants_whatever_it_sets(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    role = make_role()
    result = CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--viewer", "--tenant", "t1", "--tenant", "t3"])
    assert result.exit_code == 0, result.output
    assert _visible(pg_server, dbname, role) == ["t1", "t1", "t3"]
    assert _visible(pg_server, dbname, role, "set auditdb.tenant_id = 't2'") == ["t1", "t1", "t3"]
    assert _visible(pg_server, dbname, role, "select set_config('auditdb.tenant_id', 't2', false)") == [
        "t1",
        "t1",
        "t3",
    ]


def test_unlisted_viewer_sees_nothing_whatever_it_sets(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    role = make_role()
    CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--viewer"])
    assert _visible(pg_server, dbname, role) == []
    assert _visible(pg_server, dbname, role, "set auditdb.tenant_id = 't2'") == []


def test_tenant_from_context_is_granted_explicitly_and_reads_the_tenant_it_sets(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    role = make_role()
    result = CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--viewer", "--tenant-from-context"])
    assert result.exit_code == 0, result.output
    assert _visible(pg_server, dbname, role) == []
    assert _visible(pg_server, dbname, role, "set auditdb.tenant_id = ''") == []
    assert _visible(pg_server, dbname, role, "set auditdb.tenant_id = 't2'") == ["t2"]
    CliRunner().invoke(cli, ["--dsn", dsn, "revoke", role, "--viewer", "--tenant-from-context"])
    assert _visible(pg_server, dbname, role, "set auditdb.tenant_id = 't2'") == []


def test_anyone_else_is_refused_with_the_missing_role_named(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    role = make_role()
    result = CliRunner().invoke(cli, ["--dsn", pg_server.dsn(dbname, user=role), "log"])
    assert result.exit_code == 1
    assert "auditdb_admin or auditdb_viewer" in result.output and role in result.output
    with psycopg.connect(pg_server.dsn(dbname, user=role)) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("select * from auditdb.log")


def test_viewer_export_is_limited_to_its_tenant(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole, conn: psycopg.Connection[Any]
) -> None:
    role = make_role()
    CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--viewer", "--tenant", "t2"])
    result = CliRunner().invoke(
        cli,
        [
            "--dsn",
            pg_server.dsn(dbname, user=role),
            "export",
            "--output",
            "-",
            "--format",
            "jsonl",
            "--action",
            "LOGIN",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count('"tenant_id" : "t2"') == 1 and '"t1"' not in result.output
    [e] = audit_entries(conn, "action = 'DATA_EXPORTED'")
    assert e["tenant_id"] == "t2" and e["actor_id"] == role and e["metadata"]["rows"] == 1


def test_grant_and_revoke_are_logged(dsn: str, make_role: MakeRole, conn: psycopg.Connection[Any]) -> None:
    role = make_role()
    for args in (
        ["grant", role, "--viewer", "--tenant", "t1"],
        ["grant", role, "--writer"],
        ["revoke", role, "--viewer", "--tenant", "t1"],
        ["revoke", role, "--writer"],
    ):
        result = CliRunner().invoke(cli, ["--dsn", dsn, *args])
        assert result.exit_code == 0, result.output
    logged = [
        (e["action"], e["entity_type"], e["entity_id"], e["metadata"])
        for e in audit_entries(conn, "entity_type = 'AuditAccess'")
    ]
    assert logged == [
        ("PERMISSION_GRANT", "AuditAccess", role, {"role": "auditdb_viewer", "tenants": ["t1"]}),
        ("PERMISSION_GRANT", "AuditAccess", role, {"role": "auditdb_writer", "tenants": []}),
        ("PERMISSION_REVOKE", "AuditAccess", role, {"role": "auditdb_viewer", "tenants": ["t1"]}),
        ("PERMISSION_REVOKE", "AuditAccess", role, {"role": "auditdb_writer", "tenants": []}),
    ]
    # The viewer lost its last tenant, so it lost the viewer role too (rather than read every tenant).
    member = conn.execute("select pg_has_role(%s, 'auditdb_viewer', 'member')", (role,)).fetchone()
    assert member == (False,)
    bad = CliRunner().invoke(cli, ["--dsn", dsn, "grant", "no_such_role", "--admin"])
    assert bad.exit_code == 1 and "does not exist" in bad.output
    neither = CliRunner().invoke(cli, ["--dsn", dsn, "grant", role])
    assert neither.exit_code == 2

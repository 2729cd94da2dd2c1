"""Issue 12, item 2: a reader bound to tenants sees only those, whatever it sets or becomes.

Binding is decided from the login and every role it belongs to, never from a setting or SET ROLE;
the from-context mode is granted explicitly; an export's record is what the server counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from tests.fix_db import scalar
from tests.fix_roles import MakeRole
from tests.fix_server import Server

TENANTS = ["t1", "t1", "t2", "t3"]


@pytest.fixture
def tenants_log(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, tenant_id) "
            "select 'LOGIN', 'User', t from unnest(%s::text[]) t",
            (TENANTS,),
        )


def _grant(dsn: str, *args: str) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "grant", *args])
    assert result.exit_code == 0, result.output


def _seen(pg_server: Server, dbname: str, role: str, *setup: str, options: str = "") -> list[str]:
    with psycopg.connect(pg_server.dsn(dbname, user=role), autocommit=True, options=options) as c:
        for statement in setup:
            c.execute(statement)
        return sorted(r[0] for r in c.execute("select tenant_id from auditdb.log where action = 'LOGIN'"))


@pytest.mark.parametrize(
    "escape",
    [
        ("set role auditdb_viewer", "set auditdb.tenant_id = 't2'"),
        ("set role auditdb_viewer", "select set_config('auditdb.tenant_id', 't2', false)"),
        ("set auditdb.tenant_id = 't2'",),
        ("set session authorization default",),
    ],
)
def test_a_bound_viewer_sees_its_tenants_whatever_it_sets_or_becomes(
    escape: tuple[str, ...], dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    assert _seen(pg_server, dbname, viewer, *escape) == ["t1", "t1"]


def test_options_at_connect_time_change_nothing(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole, tmp_path: Path
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    options = "-c role=auditdb_viewer -c auditdb.tenant_id=t2"
    assert _seen(pg_server, dbname, viewer, options=options) == ["t1", "t1"]
    env = {**os.environ, "PGOPTIONS": options}
    out = tmp_path / "t.jsonl"
    result = CliRunner(env=env).invoke(
        cli, ["--dsn", pg_server.dsn(dbname, user=viewer), "export", "-o", str(out), "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["tenant_id"] for e in exported) == ["t1", "t1"]
    record = json.loads(scalar_json(dsn, "select metadata from auditdb.log where action = 'DATA_EXPORTED'"))
    assert record["rows"] == 2 and record["format"] == "jsonl" and record["complete"] is True
    assert scalar_json(dsn, "select tenant_id from auditdb.log where action = 'DATA_EXPORTED'") == "t1"


def scalar_json(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn) as c:
        value = scalar(c, query)
    return json.dumps(value) if isinstance(value, dict) else value


def test_members_and_roles_it_can_become_are_bound_too(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    bound, member, unbound = make_role(), make_role(), make_role()
    _grant(dsn, bound, "--viewer", "--tenant", "t3")
    _grant(dsn, unbound, "--admin")
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(bound), sql.Identifier(member)))
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(unbound), sql.Identifier(member)))
    # The member can become an unbound admin, but it belongs to a bound role: it sees t3 only.
    assert _seen(pg_server, dbname, member, f'set role "{unbound}"') == ["t3"]
    assert _seen(pg_server, dbname, member, f'set role "{bound}"') == ["t3"]
    # The unbound admin itself still sees everything; bound to a tenant, it sees that one only.
    assert _seen(pg_server, dbname, unbound) == sorted(TENANTS)
    _grant(dsn, unbound, "--viewer", "--tenant", "t2")
    assert _seen(pg_server, dbname, unbound) == ["t2"]


def test_an_unlisted_viewer_never_falls_into_reading_its_setting(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer")
    assert _seen(pg_server, dbname, viewer, "set auditdb.tenant_id = 't2'") == []
    bound = make_role()
    _grant(dsn, bound, "--viewer", "--tenant", "t1")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "insert into auditdb.tenant_from_context_roles (roleid, role_name) values (%s::regrole, %s)", (bound, bound)
        )
    # A bound viewer listed for the context mode too stays bound.
    assert _seen(pg_server, dbname, bound, "set auditdb.tenant_id = 't2'") == ["t1", "t1"]


def test_no_function_reveals_another_roles_tenants(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer, other = make_role(), make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    _grant(dsn, other, "--viewer", "--tenant", "t2")
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        assert scalar(c, "select auditdb.reader_tenants()") == ["t1"]
        with pytest.raises(psycopg.errors.UndefinedFunction):
            c.execute("select auditdb.reader_tenants(%s)", (other,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select * from auditdb.tenant_roles")


def test_a_reader_cannot_record_an_export_with_other_figures(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        c.execute("set auditdb.tenant_id = 't2'")
        # Whatever it claims, the server counts what those filters select for this login.
        counted = scalar(c, "select auditdb.log_export('{\"tenant\": \"t2\"}', 'csv', 'someone-else', null)")
        with pytest.raises(psycopg.errors.UndefinedFunction):
            c.execute("select auditdb.log_export('{}', 'csv', 999999, 'x', null)")
    assert counted == 0
    with psycopg.connect(dsn) as c:
        record = scalar(c, "select metadata from auditdb.log where action = 'DATA_EXPORTED'")
        db_user = scalar(c, "select db_user from auditdb.log where action = 'DATA_EXPORTED'")
    assert record == {"filters": {"tenant": "t2"}, "format": "csv", "rows": 0, "complete": True}
    assert db_user == viewer


def test_the_policy_decides_the_binding_once_per_query(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        plan = "\n".join(r[0] for r in c.execute("explain (analyze, costs off) select * from auditdb.log"))
    assert "InitPlan" in plan, plan


def test_auditdb_admin_granted_elsewhere_reads_nothing_here(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    # auditdb_admin is cluster-wide: granted for another database's log (not with `auditdb grant`
    # here), it reads nothing of this one's and manages nothing here.
    elsewhere = make_role()
    conn.execute(sql.SQL("grant auditdb_admin to {}").format(sql.Identifier(elsewhere)))
    assert _seen(pg_server, dbname, elsewhere) == []
    with psycopg.connect(pg_server.dsn(dbname, user=elsewhere), autocommit=True) as c:
        for call in (
            "select * from auditdb.prune_partitions(0, true)",
            "select auditdb.process_events(10)",
            "select auditdb.worker_beat('elsewhere', now(), 0)",
            "select * from auditdb.live_workers()",
            "select auditdb.ensure_partitions(2)",
            "select * from auditdb.partitions()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="admins of this database"):
                c.execute(call)
    _grant(dsn, elsewhere, "--admin")
    assert _seen(pg_server, dbname, elsewhere) == sorted(TENANTS)


def test_a_partition_read_directly_shows_no_more_than_the_log(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    conn.execute(sql.SQL("grant pg_read_all_data to {}").format(sql.Identifier(viewer)))
    partition = scalar(
        conn,
        "select 'auditdb.' || partition_name from auditdb.partitions() "
        "where now() >= month_start and now() < month_end",
    )
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        query = sql.SQL("select tenant_id from {} where action = 'LOGIN'").format(sql.SQL(partition))
        direct = sorted(r[0] for r in c.execute(query))
        assert scalar(c, "select count(*) from auditdb.tenant_roles") == 0
        assert scalar(c, "select count(*) from auditdb.event_queue") == 0
    assert direct == ["t1", "t1"]


def test_a_binding_follows_its_role_not_its_name(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    _grant(dsn, viewer, "--admin")
    renamed = viewer + "_renamed"
    conn.execute(sql.SQL("alter role {} rename to {}").format(sql.Identifier(viewer), sql.Identifier(renamed)))
    try:
        assert _seen(pg_server, dbname, renamed) == ["t1", "t1"]  # still bound: it does not become unbound admin
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(viewer)))
        _grant(dsn, viewer, "--viewer")
        assert _seen(pg_server, dbname, viewer) == []  # a new role under the old name inherits no binding
    finally:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(renamed)))


def test_an_export_record_is_bounded_and_checked(
    dsn: str, dbname: str, pg_server: Server, tenants_log: None, make_role: MakeRole
) -> None:
    viewer = make_role()
    _grant(dsn, viewer, "--viewer", "--tenant", "t1")
    with psycopg.connect(pg_server.dsn(dbname, user=viewer), autocommit=True) as c:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute("select auditdb.log_export(%s, 'csv', null, null)", (json.dumps({"search": "x" * 50_000}),))
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("select auditdb.log_export('{}', 'csv', null, %s)", ("\x1b[2Jevil@x.y",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select * from auditdb.archive_digest('log_2026_01')")

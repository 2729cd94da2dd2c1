"""Privilege denial matrix: what the application role tries against the log and auditing is refused."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.fix_capture import Track
from tests.fix_db import APP_ROLE, scalar

ATTEMPTS = {
    "disable a capture trigger": "alter table items disable trigger auditdb_capture_upd",
    "drop a capture trigger": "drop trigger auditdb_capture_upd on items",
    "drop a log partition": "drop table auditdb.{partition}",
    "detach a log partition": "alter table auditdb.log detach partition auditdb.{partition}",
    "create in schema auditdb": "create table auditdb.fake (id int)",
    "replica mode": "set session_replication_role = replica",
    "forge through log_audit_change": "select auditdb.log_audit_change('X', 'x', 'x', null, '{{}}')",
    "forge through log_access_change": "select auditdb.log_access_change('PERMISSION_GRANT', 'x', 'x', '{{}}')",
    "forge through process_events": "select auditdb.process_events(10)",
    "read the queue": "select * from auditdb.event_queue",
    "write the queue": "insert into auditdb.event_queue (action) values ('FORGED')",
    "change tracked config": "update auditdb.tracked_tables set config = '{{}}'",
    "change tenant bindings": "insert into auditdb.tenant_roles values ('x', 't1')",
    "begin maintenance": "select auditdb.begin_maintenance()",
    "swap the capture function": "create or replace function auditdb.capture_generic() returns trigger "
    "language plpgsql as $$ begin return null; end $$",
}


@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_application_role_is_refused(
    attempt: str, conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], track: Track
) -> None:
    track("create table items (id int primary key, v int)", '[tables."public.items"]\n')
    conn.execute(f"grant all on items to {APP_ROLE}")  # may write the table, does not own it
    conn.execute("insert into items values (1, 1)")
    before = scalar(conn, "select count(*) from auditdb.log")
    partition = scalar(conn, "select partition_name from auditdb.partitions() order by 1 desc limit 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
        app_conn.execute(ATTEMPTS[attempt].format(partition=partition))
    assert scalar(conn, "select count(*) from auditdb.log") == before
    assert (
        scalar(conn, "select count(*) from pg_trigger where tgname like 'auditdb\\_capture\\_%' and tgenabled = 'A'")
        == 4
    )
    assert scalar(conn, "select count(*) from auditdb.partitions()") == 4

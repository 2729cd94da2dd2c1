"""Issue 12, item 7: no event can block the queue. emit bounds what shares an index row of the log
and refuses the actions only capture writes; the worker sets aside an event it cannot log."""

from __future__ import annotations

import base64
import os
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from auditdb.worker import Worker
from tests.fix_capture import audit_entries, entries
from tests.fix_db import APP_ROLE, scalar


@pytest.fixture
def writer(conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]) -> Any:
    conn.execute(f"grant auditdb_writer to {APP_ROLE}")
    yield app_conn
    conn.execute(f"revoke auditdb_writer from {APP_ROLE}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entity_id": "x" * 12_800}, "at most 2048"),
        ({"entity_type": "x" * 3_200}, "at most 256"),
        ({"entity_type": "X" * 200, "entity_id": "é" * 1000}, "2200 bytes long together"),
        # A lookalike of a real type ('User' with a Cyrillic 's'), or a control character in one.
        ({"entity_type": "U\u0455er", "entity_id": "u1"}, "is not a name"),
        ({"entity_type": "User\n", "entity_id": "u1"}, "is not a name"),
        ({"entity_name": "x" * 5_000}, "at most 4096"),
        ({"metadata": {"blob": "x" * 1_100_000}}, "at most 1 MB"),
        # Lookalikes of auditdb's own entries, and splicing into another entity's history.
        ({"entity_type": "AuditAccess", "entity_id": "alice"}, "auditdb's own"),
        ({"entity_type": "User", "metadata": {"previous_id": "u1"}}, "previous_id is written only by auditdb"),
    ],
)
def test_emit_bounds_its_fields_with_a_clear_error(
    kwargs: dict[str, Any], message: str, writer: psycopg.Connection[Any]
) -> None:
    with pytest.raises(psycopg.Error, match=message), writer.transaction():
        auditdb.emit(writer, "BIG_EVENT", **kwargs)


@pytest.mark.parametrize(
    "action", ["CREATE", "UPDATE", "DELETE", "BULK_CREATE", "BULK_UPDATE", "BULK_DELETE", "AUDIT_CHANGED"]
)
def test_emit_refuses_the_actions_only_capture_writes(action: str, writer: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="written only by auditdb"), writer.transaction():
        auditdb.emit(writer, action, entity_type="User", entity_id="u1")


def test_an_event_the_worker_cannot_log_is_set_aside_and_the_rest_carry_on(
    conn: psycopg.Connection[Any], dsn: str, writer: psycopg.Connection[Any]
) -> None:
    auditdb.emit(writer, "BEFORE", entity_id="1")
    # An event that got into the queue some other way (an older emit, a superuser) and breaks the
    # log's entity index.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.event_queue (action, entity_type, entity_id) values ('POISON', 'X', %s)",
            (base64.b64encode(os.urandom(9_600)).decode(),),
        )
    auditdb.emit(writer, "AFTER", entity_id="2")
    Worker(dsn).run(once=True)
    assert [e["action"] for e in entries(conn)] == ["BEFORE", "AFTER"]
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 0
    [dead] = audit_entries(conn, "metadata->>'operation' = 'dead_letter'")
    assert dead["metadata"]["action"] == "POISON" and "index row" in dead["metadata"]["error"]
    assert scalar(conn, "select event->>'action' from auditdb.event_dead_letter") == "POISON"
    doctor = CliRunner().invoke(cli, ["--dsn", dsn, "--config", "/nonexistent.toml", "doctor"])
    assert doctor.exit_code == 1
    [line] = [line for line in doctor.output.splitlines() if "dead letters" in line]
    assert line.startswith("fail") and "1 event(s)" in line

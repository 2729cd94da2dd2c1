"""Session context: transaction-local, validated, readable back, and the Python helpers."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import auditdb
from tests.fix_db import APP_ROLE, scalar

FULL = {
    "actor_id": "u42",
    "actor_email": "ann@example.com",
    "actor_name": "Ann",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0 …",
    "tenant_id": "t1",
    "project_id": None,
    "request_id": "req-9",
}


def test_set_context_is_readable_back_and_gone_next_transaction(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(
            """select auditdb.set_context(actor_id => 'u42', actor_email => 'ann@example.com',
                      actor_name => 'Ann', ip => '203.0.113.7', user_agent => 'Mozilla/5.0 …',
                      tenant_id => 't1', project_id => null, request_id => 'req-9')"""
        )
        assert scalar(conn, "select auditdb.current_context()") == FULL
        assert scalar(conn, "select current_setting('auditdb.actor_id')") == "u42"
    assert set(scalar(conn, "select auditdb.current_context()").values()) == {None}
    assert scalar(conn, "select nullif(current_setting('auditdb.actor_id', true), '')") is None


def test_context_does_not_survive_a_rollback_either(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = False
    auditdb.set_context(conn, actor_id="u1")
    assert auditdb.current_context(conn)["actor_id"] == "u1"
    conn.rollback()
    assert auditdb.current_context(conn)["actor_id"] is None
    conn.rollback()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ip", "not-an-ip"),
        ("ip", "300.1.1.1"),
        ("actor_email", "nobody"),
        ("actor_id", "a\x1b[31m"),
        ("tenant_id", "x" * 300),
    ],
)
def test_bad_values_are_errors_naming_the_field(field: str, value: str, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught, conn.transaction():
        conn.execute(f"select auditdb.set_context({field} => %s)", (value,))
    assert field in caught.value.diag.message_primary  # type: ignore[operator]


def test_ip_is_normalised(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("select auditdb.set_context(ip => '2001:DB8:0::1')")
        assert auditdb.current_context(conn)["ip"] == "2001:db8::1"


def test_python_context_manager_restores_and_validates(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        with auditdb.context(conn, actor_id="outer", ip="198.51.100.1"):
            with auditdb.context(conn, actor_id="inner"):
                assert auditdb.current_context(conn)["actor_id"] == "inner"
                assert auditdb.current_context(conn)["ip"] is None
            assert auditdb.current_context(conn)["actor_id"] == "outer"
            assert auditdb.current_context(conn)["ip"] == "198.51.100.1"
        assert auditdb.current_context(conn)["actor_id"] is None
    with pytest.raises(auditdb.AuditDBError, match="ip"), conn.transaction():
        auditdb.set_context(conn, ip="999.0.0.1")
    with pytest.raises(auditdb.AuditDBError, match="actor_email"), conn.transaction():
        auditdb.set_context(conn, actor_email="no-at-sign")
    with pytest.raises(TypeError, match="actr"):
        auditdb.set_context(conn, actr="x")


def test_context_manager_refuses_autocommit_without_transaction(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(auditdb.AuditDBError, match="transaction"), auditdb.context(conn, actor_id="u1"):
        pass


def test_writer_role_may_set_context_others_may_not(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
        app_conn.execute("select auditdb.set_context(actor_id => 'u1')")
    conn.execute(f"grant auditdb_writer to {APP_ROLE}")
    try:
        with app_conn.transaction(), auditdb.context(app_conn, actor_id="u1"):
            assert auditdb.current_context(app_conn)["actor_id"] == "u1"
    finally:
        conn.execute(f"revoke auditdb_writer from {APP_ROLE}")

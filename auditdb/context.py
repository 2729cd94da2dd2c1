"""Session context: who is acting in the current transaction (auditdb.set_context)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq

from auditdb.errors import AuditDBError

__all__ = ["CONTEXT_BOUNDS", "FIELDS", "context", "current_context", "set_context"]

FIELDS = (
    "actor_id",
    "actor_email",
    "actor_name",
    "ip",
    "user_agent",
    "tenant_id",
    "project_id",
    "request_id",
)

# The most characters of each setting an entry records (sql/definitions/context.sql cuts to the
# same, and the generated capture renders these): an oversized value set with set_config behind
# set_context's back is cut, never allowed to break a write or keep a DDL watcher from logging.
CONTEXT_BOUNDS = {
    "actor_id": 256,
    "actor_email": 320,
    "actor_name": 256,
    "ip": 64,
    "user_agent": 1024,
    "tenant_id": 256,
    "project_id": 256,
    "request_id": 256,
}

_SET_CONTEXT = psycopg.sql.SQL("select auditdb.set_context({})").format(
    psycopg.sql.SQL(", ").join(
        psycopg.sql.SQL("{} => {}").format(psycopg.sql.Identifier(f), psycopg.sql.Placeholder(f)) for f in FIELDS
    )
)


def _normalise(fields: dict[str, Any]) -> dict[str, str | None]:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown context field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    values: dict[str, str | None] = {}
    for name in FIELDS:
        value = fields.get(name)
        if name == "ip" and value is not None and value != "":
            try:
                value = str(ipaddress.ip_address(str(value)))
            except ValueError as e:
                raise AuditDBError(f"context field ip: {value!r} is not an IP address") from e
        values[name] = None if value is None else str(value)
    return values


def set_context(conn: psycopg.Connection[Any], **fields: Any) -> None:
    """Set the whole context for the rest of the current transaction (unset fields become NULL).

    >>> auditdb.set_context(conn, actor_id="u42", ip="203.0.113.7")
    """
    values = _normalise(fields)
    try:
        conn.execute(_SET_CONTEXT, values)
    except psycopg.errors.InvalidParameterValue as e:
        raise AuditDBError(e.diag.message_primary or str(e)) from e


def current_context(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    """The context in force in the current transaction, every field present."""
    row = conn.execute("select auditdb.current_context()").fetchone()
    assert row is not None
    data: dict[str, str | None] = dict(row[0])
    return data


@contextmanager
def context(conn: psycopg.Connection[Any], **fields: Any) -> Iterator[None]:
    """Act as someone for the statements inside the block, within the current transaction.

    The context is transaction-local: it never outlives the transaction. On leaving the block
    the previous context of the transaction is restored, so statements after it are not
    attributed to this actor.

    >>> with conn.transaction(), auditdb.context(conn, actor_id="u42", ip="203.0.113.7"):
    ...     conn.execute("update test_cases set name = %s where id = %s", ("Login works", 7))
    """
    values = _normalise(fields)
    status = conn.info.transaction_status
    if conn.autocommit and status == pq.TransactionStatus.IDLE:
        raise AuditDBError(
            "auditdb.context needs a transaction on an autocommit connection: "
            "use `with conn.transaction(), auditdb.context(conn, ...)`"
        )
    previous = current_context(conn)
    set_context(conn, **values)
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.INTRANS:
            set_context(conn, **previous)

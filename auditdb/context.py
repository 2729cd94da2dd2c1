"""Session context: who is acting in the current transaction (auditdb.set_context)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import pq

from auditdb.db import api_call, require_connection
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

# "select from": one row of no column, so there is nothing to load, whatever the caller registered.
_SET_CONTEXT = psycopg.sql.SQL("select from auditdb.set_context({})").format(
    psycopg.sql.SQL(", ").join(
        psycopg.sql.SQL("{} => {}").format(psycopg.sql.Identifier(f), psycopg.sql.Placeholder(f)) for f in FIELDS
    )
)
# As text, parsed here: frameworks register jsonb loaders of their own (Django's returns text).
_CURRENT_CONTEXT = psycopg.sql.SQL("select auditdb.current_context()::pg_catalog.text")


def check_known(fields: Mapping[str, Any]) -> None:
    """Unknown keys are a programming error (TypeError), wherever context fields are given."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown context field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")


def _normalise(fields: dict[str, Any]) -> dict[str, str | None]:
    check_known(fields)
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


def _transaction_status(conn: psycopg.Connection[Any]) -> pq.TransactionStatus:
    """The connection's transaction status, known even in pipeline mode.

    With statements queued in a pipeline libpq reports ACTIVE, in a transaction or not: only
    a sync tells. Outside pipeline mode this costs nothing.
    """
    status = conn.info.transaction_status
    if status == pq.TransactionStatus.ACTIVE and conn.info.pipeline_status != pq.PipelineStatus.OFF:
        with conn.pipeline() as pipeline:
            pipeline.sync()
        status = conn.info.transaction_status
    return status


def _require_transaction(conn: psycopg.Connection[Any], what: str) -> None:
    require_connection(conn, what)
    # Without autocommit psycopg opens a transaction with the next statement, which holds the context.
    if conn.autocommit and _transaction_status(conn) == pq.TransactionStatus.IDLE:
        raise AuditDBError(
            f"{what} needs a transaction: on an autocommit connection outside one the context would "
            "vanish with the statement that sets it; call it inside `with conn.transaction():` "
            "(Django: `with transaction.atomic():`)"
        )


def set_context(conn: psycopg.Connection[Any], **fields: Any) -> None:
    """Set the whole context for the rest of the current transaction (unset fields become NULL).

    Refused on an autocommit connection outside a transaction (Django's default outside
    atomic()), where the setting would end with its own statement.

    >>> with conn.transaction():
    ...     auditdb.set_context(conn, actor_id="u42", ip="203.0.113.7")
    """
    values = _normalise(fields)
    _require_transaction(conn, "auditdb.set_context")
    _set(conn, values)


def _set(conn: psycopg.Connection[Any], values: dict[str, str | None]) -> None:
    try:
        api_call(conn, "auditdb.set_context", _SET_CONTEXT, values)
    except psycopg.errors.InvalidParameterValue as e:
        raise AuditDBError(e.diag.message_primary or str(e)) from e


def current_context(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    """The context in force in the current transaction, every field present."""
    (text,) = api_call(conn, "auditdb.current_context", _CURRENT_CONTEXT, {})
    data = json.loads(text)
    return {name: None if data.get(name) is None else str(data[name]) for name in FIELDS}


@contextmanager
def context(conn: psycopg.Connection[Any], **fields: Any) -> Iterator[None]:
    """Act as someone for the statements inside the block, within the current transaction.

    The context is transaction-local: it never outlives the transaction. On leaving the block
    the previous context of the transaction is restored, so statements after it are not
    attributed to this actor. Refused on an autocommit connection outside a transaction.

    >>> with conn.transaction(), auditdb.context(conn, actor_id="u42", ip="203.0.113.7"):
    ...     conn.execute("update test_cases set name = %s where id = %s", ("Login works", 7))
    """
    values = _normalise(fields)
    _require_transaction(conn, "auditdb.context")
    previous = current_context(conn)
    _set(conn, values)
    try:
        yield
    except BaseException:
        # The block's own error is the one to see; a transaction it left failed has no context.
        with suppress(psycopg.Error, AuditDBError):
            _restore(conn, previous)
        raise
    _restore(conn, previous)


def _restore(conn: psycopg.Connection[Any], previous: dict[str, str | None]) -> None:
    if not conn.closed and _transaction_status(conn) == pq.TransactionStatus.INTRANS:
        _set(conn, previous)

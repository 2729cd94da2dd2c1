"""Emitting events no table change shows (LOGIN, LOGIN_FAILED, DATA_EXPORTED, …)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from auditdb.context import FIELDS, set_context
from auditdb.db import api_call, connect
from auditdb.errors import AuditDBError

__all__ = ["EventSender", "emit"]

ACTION_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Everything crosses as text (serialised and parsed here), so the loaders and JSON dumpers a
# framework registered on the connection play no part; the casts name pg_catalog's types, whatever
# the caller's search_path.
_EMIT = sql.SQL(
    "select auditdb.emit(%(action)s, %(entity_type)s, %(entity_id)s, %(entity_name)s,"
    " %(metadata)s::pg_catalog.jsonb)::pg_catalog.text"
)


def emit(
    conn: psycopg.Connection[Any],
    action: str,
    *,
    entity_type: str | None = None,
    entity_id: str | int | None = None,
    entity_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Record an event in the connection's current transaction; returns its queue id.

    The context (actor, IP, user agent, tenant, project, request id) is the transaction's, as
    set by auditdb.context. If the transaction rolls back, the event is never logged; use
    EventSender for events that must outlive a failing request.

    >>> auditdb.emit(conn, "LOGIN", entity_type="User", entity_id="u42", metadata={"method": "sso"})
    """
    if not ACTION_RE.match(action):
        raise AuditDBError(f"event action {action!r} must match ^[A-Z][A-Z0-9_]*$ (e.g. LOGIN_FAILED)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise AuditDBError("event metadata must be a mapping (a JSON object)")
    try:
        document = json.dumps(dict(metadata or {}), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise AuditDBError(f"event metadata is not JSON: {e}") from e
    params = {
        "action": action,
        # As str whatever was passed: an int would reach the server as another type and find
        # no auditdb.emit to call.
        "entity_type": None if entity_type is None else str(entity_type),
        "entity_id": None if entity_id is None else str(entity_id),
        "entity_name": None if entity_name is None else str(entity_name),
        "metadata": document,
    }
    (queue_id,) = api_call(conn, "auditdb.emit", _EMIT, params)
    return int(queue_id)


class EventSender:
    """Emits on its own autocommit connection, so events survive the caller's rollback.

    For LOGIN_FAILED and the like: the request fails and rolls back, the event stays.

    >>> sender = auditdb.EventSender(dsn)
    >>> sender.emit("LOGIN_FAILED", entity_type="User", metadata={"email": email, "reason": "bad password"},
    ...             context={"ip": client_ip, "user_agent": ua})
    """

    def __init__(self, dsn: str | None = None, *, connect: Callable[[], psycopg.Connection[Any]] | None = None) -> None:
        """dsn as for auditdb's commands, or connect: a function opening an autocommit connection."""
        self._dsn = dsn
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect() if self._connect is not None else connect(self._dsn, autocommit=True)
        return self._conn

    def emit(self, action: str, *, context: Mapping[str, Any] | None = None, **fields: Any) -> int:
        """Emit and commit at once, with the given context (keys as for auditdb.context)."""
        unknown = sorted(set(context or {}) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown context field(s) {', '.join(unknown)}")
        conn = self._connection()
        with conn.transaction():
            set_context(conn, **dict(context or {}))
            return emit(conn, action, **fields)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EventSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""SQLAlchemy 2 (psycopg 3 driver): set the context at the start of each transaction.

    from sqlalchemy import create_engine
    from auditdb.integrations import acting
    from auditdb.integrations.sqlalchemy import track_context

    engine = create_engine("postgresql+psycopg://app@db/app")
    track_context(engine)

    with acting(actor_id="u42", ip="203.0.113.7"), Session(engine) as session, session.begin():
        session.add(Order(...))        # logged as u42

The hook checks the context before each statement: when the fields of the request or `acting`
block running now (auditdb.integrations) differ from what the transaction holds, it sends
auditdb.set_context first, on the statement's connection. So a transaction begun under one actor
and carried on under another (a long-lived Session, a worker loop) attributes each change to
whoever made it, and statements outside any block clear what an earlier block set. The context
ends with the transaction, so a pooled connection carries nothing to its next user. Statements the
context's own source runs (loading the user) go through untouched. An engine in AUTOCOMMIT
isolation has no transaction to hold a context: set_context refuses it. AsyncEngine is not
supported (its driver connection is not a psycopg Connection).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from auditdb.context import set_context
from auditdb.errors import AuditDBError
from auditdb.integrations import clean_fields, computing, current_fields

__all__ = ["track_context"]

# What the transaction holds, kept with the DBAPI connection; forgotten when a transaction begins
# or ends and when a savepoint is rolled back (which undoes a set_context made since).
_HELD = "auditdb_context"


def _forget(conn: Connection, *args: Any) -> None:
    conn.info.pop(_HELD, None)


def _before(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if computing():
        return
    fields = current_fields()
    held = conn.info.get(_HELD)
    if fields is None and held is None:
        return
    wanted = fields if fields is not None else clean_fields({})
    if wanted != held:
        set_context(conn.connection.driver_connection, **wanted)  # type: ignore[arg-type]
        conn.info[_HELD] = wanted


def track_context(engine: Engine | Any) -> None:
    """Keep auditdb's context right for every statement on this engine (idempotent)."""
    if hasattr(engine, "sync_engine"):
        raise AuditDBError("track_context takes a synchronous Engine: AsyncEngine is not supported yet")
    hooks = (
        ("begin", _forget),
        ("commit", _forget),
        ("rollback", _forget),
        ("rollback_savepoint", _forget),
        ("before_cursor_execute", _before),
    )
    for name, hook in hooks:
        if not event.contains(engine, name, hook):
            event.listen(engine, name, hook)

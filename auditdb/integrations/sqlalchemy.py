"""SQLAlchemy 2 (psycopg 3 driver): set the context at the start of each transaction.

    from sqlalchemy import create_engine
    from auditdb.integrations import acting
    from auditdb.integrations.sqlalchemy import track_context

    engine = create_engine("postgresql+psycopg://app@db/app")
    track_context(engine)

    with acting(actor_id="u42", ip="203.0.113.7"), Session(engine) as session, session.begin():
        session.add(Order(...))        # logged as u42

The hook listens to the engine's `begin` event: when a transaction begins while a request or an
`acting` block says who is acting (auditdb.integrations), it sends auditdb.set_context on the
transaction's connection before anything else. Outside any, it sends nothing. The context ends
with the transaction, so a pooled connection carries nothing to its next user. An engine in
AUTOCOMMIT isolation has no transaction to hold a context: set_context refuses it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from auditdb.context import set_context
from auditdb.integrations import current_fields

__all__ = ["track_context"]


def _on_begin(conn: Connection) -> None:
    fields = current_fields()
    if fields is None:
        return
    driver = conn.connection.driver_connection
    set_context(driver, **fields)  # type: ignore[arg-type]


def track_context(engine: Engine | Any) -> None:
    """Set auditdb's context at each transaction's start on this engine (idempotent).

    Takes an Engine or an AsyncEngine (its sync_engine is hooked).
    """
    target = getattr(engine, "sync_engine", engine)
    if not event.contains(target, "begin", _on_begin):
        event.listen(target, "begin", _on_begin)

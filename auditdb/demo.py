"""`auditdb demo`: auditdb at work on an embedded PostgreSQL, with no setup."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from auditdb import partitions
from auditdb.context import FIELDS, context, current_context
from auditdb.embedded import local_server, server_version
from auditdb.install import install

__all__ = ["run_demo"]


def run_demo(echo: Callable[[str], None], *, keep: bool = False) -> None:
    """Start a throw-away server, install auditdb, show what it set up, then remove everything."""
    started = time.monotonic()
    with local_server() as server:
        echo(f"started PostgreSQL {server_version(server.bindir)[1]} on 127.0.0.1:{server.port} (throw-away)")
        dsn = server.dsn()
        _, after = install(dsn)
        echo(f"installed auditdb, schema version {after}")
        with psycopg.connect(dsn) as conn:
            echo("")
            echo("monthly partitions of auditdb.log (UTC):")
            for p in partitions.list_partitions(conn):
                echo(f"  auditdb.{p.name}  {p.month_start:%Y-%m}")
            echo("")
            echo("session context, set per transaction by the application:")
            with (
                conn.transaction(),
                context(
                    conn,
                    actor_id="u42",
                    actor_email="ann@example.com",
                    actor_name="Ann",
                    ip="203.0.113.7",
                    user_agent="Mozilla/5.0 (demo)",
                    tenant_id="t1",
                    request_id="req-9",
                ),
            ):
                shown = current_context(conn)
                for key in FIELDS:
                    echo(f"  {key:<12} {shown[key] if shown[key] is not None else '—'}")
            after_commit = {k: v for k, v in current_context(conn).items() if v is not None}
            conn.rollback()
            echo(f"after commit, the next transaction on that connection sees: {after_commit or 'nothing'}")
        if keep:
            echo("")
            echo(f"server left running: psql '{dsn}'  — press Enter to stop and remove it")
            input()
    echo("")
    echo(f"done in {time.monotonic() - started:.1f} s; server stopped and removed")

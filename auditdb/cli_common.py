"""What the command modules share: the connection a command works on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg

from auditdb import db

__all__ = ["connection"]


@contextmanager
def connection(ctx: click.Context, *, installed: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """The database of --dsn (else the environment's), autocommit, closed on exit.

    Autocommit, so each `with conn.transaction()` of the library is a real transaction; installed:
    refuse a database without this release of auditdb first.
    """
    conn = db.connect(ctx.obj["dsn"], autocommit=True)
    try:
        if installed:
            db.require_installed(conn)
        yield conn
    finally:
        conn.close()

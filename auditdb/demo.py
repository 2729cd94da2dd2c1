"""`auditdb demo`: auditdb at work on an embedded PostgreSQL, with no setup."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from auditdb.config import load_config
from auditdb.context import context
from auditdb.embedded import GET_EMBEDDED, embedded_bindir, local_server, server_version
from auditdb.install import install
from auditdb.query import get_entry
from auditdb.render import change_lines, safe
from auditdb.triggers import apply

__all__ = ["run_demo"]

ACTORS = {
    "ann": {
        "actor_id": "u1",
        "actor_email": "ann@example.com",
        "actor_name": "Ann Admin",
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0",
        "tenant_id": "acme",
    },
    "bob": {
        "actor_id": "u2",
        "actor_email": "bob@example.com",
        "actor_name": "Bob Tester",
        "ip": "198.51.100.23",
        "user_agent": "Mozilla/5.0 (Macintosh) Safari/18.1",
        "tenant_id": "acme",
    },
    "cho": {
        "actor_id": "u3",
        "actor_email": "cho@example.com",
        "actor_name": "Cho Lead",
        "ip": "2001:db8::42",
        "user_agent": "testplanit-cli/2.4",
        "tenant_id": "acme",
    },
}

# (actor, request id, statements) — what three people do in the app over a few minutes.
ACTIVITY: list[tuple[str, str, list[str]]] = [
    (
        "ann",
        "req-1",
        [
            "insert into users (id, tenant_id, email, name, role, password_hash) values"
            " (1, 'acme', 'ann@example.com', 'Ann Admin', 'ADMIN', 'bcrypt$1'),"
            " (2, 'acme', 'bob@example.com', 'Bob Tester', 'USER', 'bcrypt$2'),"
            " (3, 'acme', 'cho@example.com', 'Cho Lead', 'USER', 'bcrypt$3')",
            "insert into projects (id, tenant_id, name) values (1, 'acme', 'Checkout')",
        ],
    ),
    ("ann", "req-2", ["insert into project_permissions values (2, 1, 'acme', 'EDIT')"]),
    (
        "bob",
        "req-3",
        [
            "insert into test_cases (tenant_id, project_id, name, priority) values"
            " ('acme', 1, 'Pay with saved card', 2), ('acme', 1, 'Apply coupon', 3), ('acme', 1, 'Guest checkout', 3)",
        ],
    ),
    (
        "bob",
        "req-4",
        ["update test_cases set name = 'Apply an expired coupon', priority = 1 where name = 'Apply coupon'"],
    ),
    ("cho", "req-5", ["update test_cases set priority = 2 where project_id = 1"]),
    ("cho", "req-6", ["update test_cases set is_deleted = true where name = 'Guest checkout'"]),
    ("bob", "req-7", ["update users set password_hash = 'bcrypt$2b' where id = 2"]),
    (
        "ann",
        "req-8",
        [
            "insert into api_tokens (id, tenant_id, user_id, label, token_hash, token_prefix)"
            " values (1, 'acme', 2, 'CI pipeline', 'sha256$f00dfeedcafe9f2c', 'tp_9f2c')",
            "update api_tokens set revoked_at = now() where id = 1",
        ],
    ),
    ("ann", "req-9", ["update users set role = 'ADMIN' where id = 3"]),
]


def _example(name: str) -> Path:
    return Path(str(resources.files("auditdb.examples"))) / "testplanit" / name


def run_demo(echo: Callable[[str], None], *, keep: bool = False) -> None:
    """Start a throw-away server, install auditdb, track the example app, act, show the log."""
    started = time.monotonic()
    with local_server() as server:
        echo(f"started PostgreSQL {server_version(server.bindir)[1]} on 127.0.0.1:{server.port} (throw-away)")
        if embedded_bindir() is None:
            echo(f"(the system's server in {server.bindir}: no embedded PostgreSQL; {GET_EMBEDDED})")
        dsn = server.dsn()
        _, version = install(dsn)
        echo(f"installed auditdb, schema version {version}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_example("schema.sql").read_text(encoding="utf-8"))
            config = load_config(_example("auditdb.toml"))
            result = apply(conn, config)
            echo(f"tracked {len(result.added)} tables of the TestPlanIt example (examples/testplanit/auditdb.toml)")
            for who, request, statements in ACTIVITY:
                with conn.transaction(), context(conn, **ACTORS[who], request_id=request):
                    for statement in statements:
                        conn.execute(statement)
            _show(conn, echo)
        if keep:
            echo("")
            echo(f"server left running: psql '{dsn}'  — press Enter to stop and remove it")
            input()
    echo("")
    echo(f"done in {time.monotonic() - started:.1f} s; server stopped and removed")


def _show(conn: psycopg.Connection[Any], echo: Callable[[str], None]) -> None:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """select id, occurred_at, action, entity_type, entity_id, entity_name, actor_email, ip
                 from auditdb.log where action <> 'AUDIT_CHANGED' order by id desc limit 15"""
        ).fetchall()
        total = cur.execute("select count(*) as n from auditdb.log").fetchone()
    echo("")
    echo(f"newest entries of auditdb.log ({total['n'] if total else 0} in all):")
    echo(f"  {'id':>3}  {'time (UTC)':<8}  {'action':<18} {'entity':<22} {'name':<24} {'user':<16} ip")
    for r in rows:
        entity = safe(f"{r['entity_type']} {r['entity_id'] or ''}")[:22]
        echo(
            f"  {r['id']:>3}  {r['occurred_at']:%H:%M:%S}  {r['action']:<18} {entity:<22} "
            f"{safe(r['entity_name'] or '')[:24]:<24} {safe(r['actor_email'] or '-'):<16} {r['ip'] or '-'}"
        )
    picks = conn.execute(
        """select e.id, e.metadata->>'request_id'
             from (select id, metadata from auditdb.log
                    where action in ('UPDATE', 'BULK_UPDATE') and entity_type = 'TestCase' order by id limit 1) e
           union all
           select e.id, e.metadata->>'request_id'
             from (select id, metadata from auditdb.log where action = 'PASSWORD_CHANGED' order by id limit 1) e"""
    ).fetchall()
    requests: dict[int, str | None] = dict(picks)
    for entry_id in requests:
        # Through the CLI's own reading path: values exactly as stored, never through a float.
        entry = get_entry(conn, entry_id)
        if entry is None:
            continue
        echo("")
        echo(
            f"entry {entry['id']}: {entry['action']} of {entry['entity_type']} {entry['entity_id']}"
            f" by {safe(entry['actor_name'] or '-')} <{safe(entry['actor_email'] or '-')}>"
            f" from {entry['ip']}, request {safe(requests[entry_id] or '-')}, txid {entry['txid']}"
        )
        for line in change_lines(entry["changes"]):
            echo(f"  {line}")

"""Rollback fidelity and attribution: the log holds exactly the committed changes, each by the right actor."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import psycopg
import pytest

import auditdb
from tests.fix_capture import Track, entries

KV = "create table kv (id int primary key, v int, actor text)"
KV_TOML = '[tables."public.kv"]\nentity_type = "Kv"\n'


def _replay(log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The table as the log tells it: creations and updates set values, deletions remove rows."""
    rows: dict[str, dict[str, Any]] = {}
    for e in log:
        changes = e["changes"] or {}
        if all(set(c) == {"old"} for c in changes.values()):
            rows.pop(e["entity_id"], None)
            continue
        if "previous_id" in e["metadata"]:
            rows[e["entity_id"]] = rows.pop(e["metadata"]["previous_id"])
        row = rows.setdefault(e["entity_id"], {})
        for column, change in changes.items():
            row[column] = change["new"]
    return rows


# Tables of the example schema without foreign keys between them, and how to change them.
OPS = {
    "tags": (
        "insert into tags (id, tenant_id, name) values (%(k)s, 't1', 'tag ' || %(k)s) on conflict (id) do nothing",
        "update tags set name = name || '+' where id between %(k)s and %(k)s + 3",
        "delete from tags where id = %(k)s",
        "update tags set id = %(k)s + 1000 where id = %(k)s and not exists (select from tags where id = %(k)s + 1000)",
    ),
    "email_domains": (
        "insert into email_domains (id, tenant_id, domain) values (%(k)s, 't1', 'd' || %(k)s || '.com') "
        "on conflict (id) do nothing",
        "update email_domains set allowed = not allowed where id between %(k)s and %(k)s + 3",
        "delete from email_domains where id = %(k)s",
        "update email_domains set is_missing = 1 where false",
    ),
    "app_config": (
        "insert into app_config values ('k' || %(k)s, 't1', to_jsonb(%(k)s)) on conflict do nothing",
        "update app_config set value = to_jsonb(coalesce(value::int, 0) + 1) "
        "where key in ('k' || %(k)s, 'k' || %(k)s + 1)",
        "delete from app_config where key = 'k' || %(k)s",
        "update app_config set key = 'k' || %(k)s + 1000 where key = 'k' || %(k)s "
        "and not exists (select from app_config where key = 'k' || %(k)s + 1000)",
    ),
}
ENTITY = {"tags": "Tag", "email_domains": "EmailDomain", "app_config": "AppConfig"}


@pytest.mark.slow  # a load test: `./run test -m slow`
def test_rollback_fidelity_over_5000_random_transactions(conn: psycopg.Connection[Any], dsn: str, example: Any) -> None:
    rng = random.Random(7)
    committed = 0
    with psycopg.connect(dsn) as app:
        for _ in range(5000):
            changed = 0
            rolled_back = rng.random() < 0.5
            try:
                with app.transaction():
                    for _ in range(rng.randint(1, 4)):
                        table = rng.choice(sorted(OPS))
                        op = rng.random()
                        params = {"k": rng.randint(1, 40)}
                        if op < 0.85:
                            statement = OPS[table][0 if op < 0.35 else 1 if op < 0.6 else 2 if op < 0.75 else 3]
                            if "is_missing" in statement:
                                continue
                            changed += app.execute(statement, params).rowcount
                        else:
                            try:
                                with app.transaction():  # a savepoint rolled back
                                    app.execute(f"update {table} set tenant_id = 'x'")  # noqa: S608
                                    raise RuntimeError
                            except RuntimeError:
                                pass
                    if rolled_back:
                        raise psycopg.Rollback()  # swallowed by the transaction block
                if not rolled_back:
                    committed += changed
            except psycopg.errors.UniqueViolation:
                pass
    log = entries(conn)
    print(f"5000 transactions: {committed} committed row changes, {len(log)} entries")
    assert len(log) == committed
    for table, entity_type in ENTITY.items():
        key = "(tenant_id, key)" if table == "app_config" else "id"
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute(f"select * from {table} order by {key}").fetchall()  # noqa: S608
        expected = {}
        for r in rows:
            ident = (
                json.dumps({"key": r["key"], "tenant_id": r["tenant_id"]}, separators=(", ", ": "))
                if table == "app_config"
                else str(r["id"])
            )
            expected[ident] = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
        assert _replay([e for e in log if e["entity_type"] == entity_type]) == expected, table


@pytest.mark.slow  # a load test: `./run test -m slow`
def test_attribution_under_concurrency(conn: psycopg.Connection[Any], dsn: str, track: Track) -> None:
    track(KV, KV_TOML)
    conn.execute("insert into kv select g, 0, null from generate_series(1, 400) g")

    def work(worker: int) -> None:
        rng = random.Random(worker)
        with psycopg.connect(dsn) as app:
            for n in range(1000):
                actor = None if rng.random() < 0.2 else f"w{worker}-a{rng.randint(0, 9)}"
                k = rng.randint(1, 400)
                with app.transaction():
                    if actor:
                        auditdb.set_context(app, actor_id=actor, ip=f"10.0.{worker}.{n % 250}", tenant_id=actor)
                    # The row records who wrote it, so each entry can be checked against its writer.
                    app.execute("update kv set v = v + 1, actor = %s where id = %s", (actor or f"none-{worker}", k))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = entries(conn, "action = 'UPDATE'")
    assert len(log) == 8 * 1000  # every transaction changed v, so each wrote one entry
    wrong = 0
    for e in log:
        writer = e["changes"]["actor"]["new"] if "actor" in e["changes"] else None
        if writer is None:
            continue
        expected = None if writer.startswith("none-") else writer
        wrong += (e["actor_id"], e["tenant_id"]) != (expected, expected)
    print(f"8 x 1000 transactions: {len(log)} entries, {wrong} attributed to the wrong actor")
    assert wrong == 0

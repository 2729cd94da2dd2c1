"""Rollback fidelity and attribution: the log holds exactly the committed changes, each by the right actor."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg

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


def test_rollback_fidelity_over_2000_random_transactions(conn: psycopg.Connection[Any], dsn: str, track: Track) -> None:
    track(KV, KV_TOML)
    rng = random.Random(7)
    committed_changes = 0
    with psycopg.connect(dsn) as app:
        for _ in range(2000):
            changed = 0
            rolled_back = rng.random() < 0.5
            try:
                with app.transaction():
                    for _ in range(rng.randint(1, 4)):
                        op = rng.random()
                        k = rng.randint(1, 60)
                        if op < 0.35:
                            cur = app.execute("insert into kv values (%s, %s) on conflict (id) do nothing", (k, k))
                        elif op < 0.6:
                            cur = app.execute("update kv set v = v + 1 where id between %s and %s", (k, k + 3))
                        elif op < 0.75:
                            cur = app.execute("delete from kv where id = %s", (k,))
                        elif op < 0.85:
                            cur = app.execute(
                                "update kv set id = %s where id = %s and not exists (select from kv where id = %s)",
                                (k + 100, k, k + 100),
                            )
                        else:
                            try:
                                with app.transaction():  # a savepoint rolled back
                                    app.execute("update kv set v = -1")
                                    raise RuntimeError
                            except RuntimeError:
                                pass
                            continue
                        changed += cur.rowcount
                    if rolled_back:
                        raise psycopg.Rollback()  # swallowed by the transaction block
                if not rolled_back:
                    committed_changes += changed
            except psycopg.errors.UniqueViolation:
                pass
    log = entries(conn)
    assert len(log) == committed_changes
    table = {str(r[0]): {"id": r[0], "v": r[1], "actor": r[2]} for r in conn.execute("select * from kv")}
    assert _replay(log) == table


def test_attribution_under_concurrency(conn: psycopg.Connection[Any], dsn: str, track: Track) -> None:
    track(KV, KV_TOML)
    conn.execute("insert into kv select g, 0, null from generate_series(1, 400) g")

    def work(worker: int) -> None:
        rng = random.Random(worker)
        with psycopg.connect(dsn) as app:
            for n in range(250):
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
    assert len(log) == 8 * 250  # every transaction changed v, so each wrote one entry
    wrong = 0
    for e in log:
        writer = e["changes"]["actor"]["new"] if "actor" in e["changes"] else None
        if writer is None:
            continue
        expected = None if writer.startswith("none-") else writer
        wrong += (e["actor_id"], e["tenant_id"]) != (expected, expected)
    assert wrong == 0

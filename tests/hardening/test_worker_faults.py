"""Worker faults at 10x the events issue's count: kill -9, killed connections, server restarts."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import auditdb
from tests.fix_server import Server
from tests.fix_worker import drain, start_worker


@pytest.mark.slow
def test_200_kills_10_killed_connections_and_10_restarts_lose_nothing(
    conn: psycopg.Connection[Any], dsn: str, pg_server: Server, tmp_path: Path
) -> None:
    if pg_server.local is None:
        pytest.skip("needs a server the suite started")
    total, writers = 50_000, 4
    log = tmp_path / "workers.log"

    def emit_many(start: int) -> None:
        ns = list(range(start, total, writers))
        i, resumed = 0, False
        while i < len(ns):
            try:
                with psycopg.connect(dsn, autocommit=True) as c:
                    while i < len(ns):
                        batch = ns[i : i + 40]
                        if resumed:
                            # A restart may have come between our COMMIT and its answer: send only
                            # what is neither queued nor logged, so the count below stays exact.
                            have = {
                                int(r[0])
                                for r in c.execute(
                                    """select metadata->>'n' from auditdb.event_queue
                                    where (metadata->>'n')::int = any(%s)
                                   union all
                                   select metadata->>'n' from auditdb.log
                                    where action = 'LOGIN' and (metadata->>'n')::int = any(%s)""",
                                    (batch, batch),
                                )
                            }
                            batch = [m for m in batch if m not in have]
                            resumed = False
                        with c.transaction():
                            for m in batch:
                                auditdb.emit(c, "LOGIN", entity_id=str(m), metadata={"n": m})
                        i += 40
                        time.sleep(0.01)
            except psycopg.OperationalError:
                resumed = True
                time.sleep(0.2)

    threads = [threading.Thread(target=emit_many, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    rng = random.Random(200)
    worker = start_worker(dsn, log)
    kills = restarts = terminations = 0
    try:
        while kills < 200:
            time.sleep(rng.uniform(0.05, 0.35))
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            kills += 1
            worker = start_worker(dsn, log)
            if kills % 20 == 10:
                time.sleep(0.3)
                with psycopg.connect(dsn, autocommit=True) as admin:
                    admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity "
                        "where application_name = 'auditdb worker'"
                    )
                terminations += 1
            if kills % 20 == 0:
                pg_server.local.restart()
                restarts += 1
        for t in threads:
            t.join()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        worker.kill()
        worker.wait()
    drain(dsn)
    assert (kills, terminations, restarts) == (200, 10, 10)
    with psycopg.connect(dsn) as check:
        row = check.execute("""select count(*), count(distinct (metadata->>'n')::int) from auditdb.log
                                where action = 'LOGIN'""").fetchone()
        queued = check.execute("select count(*) from auditdb.event_queue").fetchone()
    print(f"200 kills, 10 killed connections, 10 restarts: {row[0] if row else 0} of {total} events logged once")
    assert row == (total, total)
    assert queued == (0,)

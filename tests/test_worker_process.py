"""The worker as a process: SIGTERM, kill -9 at random moments, server restarts — no event lost or doubled."""

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
from tests.fix_db import scalar
from tests.fix_server import Server
from tests.fix_worker import drain, start_worker


def _count(conn: psycopg.Connection[Any], action: str = "LOGIN") -> int:
    return int(scalar(conn, "select count(*) from auditdb.log where action = %s", (action,)))


def test_sigterm_finishes_and_exits_zero(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(dsn, log)
    try:
        auditdb.emit(conn, "LOGIN", entity_id="1")
        deadline = time.monotonic() + 10
        while _count(conn) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    finally:
        worker.kill()
        worker.wait()
    err = log.read_text()
    assert worker.returncode == 0, err
    assert "logged 1 event(s)" in err and "stopped" in err


@pytest.mark.slow
def test_kill_9_twenty_times_while_4_connections_emit_5000_events(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    total, writers = 5000, 4

    def emit_many(start: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for n in range(start, total, writers):
                auditdb.emit(c, "LOGIN", entity_id=str(n), metadata={"n": n})
                if n % 50 == 0:
                    time.sleep(0.01)

    threads = [threading.Thread(target=emit_many, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    rng = random.Random(20)
    kills = 0
    worker = start_worker(dsn, log)
    try:
        while kills < 20:
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            kills += 1
            worker = start_worker(dsn, log)
        for t in threads:
            t.join()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        worker.kill()
        worker.wait()
    drain(dsn)
    assert kills == 20
    row = conn.execute("""select count(*), count(distinct (metadata->>'n')::int), min((metadata->>'n')::int),
                                 max((metadata->>'n')::int)
                            from auditdb.log where action = 'LOGIN'""").fetchone()
    assert row == (total, total, 0, total - 1)
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 0


def test_worker_survives_a_server_restart(
    conn: psycopg.Connection[Any], dsn: str, pg_server: Server, tmp_path: Path
) -> None:
    if pg_server.local is None:
        pytest.skip("needs a server the suite started")
    log = tmp_path / "worker.log"
    worker = start_worker(dsn, log)
    try:
        time.sleep(0.5)
        pg_server.local.restart()
        with psycopg.connect(dsn, autocommit=True) as again:
            auditdb.emit(again, "LOGIN", entity_id="after-restart")
            deadline = time.monotonic() + 30
            while _count(again) == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _count(again) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=15)
    err = log.read_text()
    assert worker.returncode == 0, err
    assert "lost its connection" in err or "cannot connect" in err

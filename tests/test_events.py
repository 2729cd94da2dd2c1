"""Events: emit → durable queue → worker → log, exactly once; the Python API and the worker's manners."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

import auditdb
from auditdb.worker import Worker
from tests.fix_capture import Track, entries
from tests.fix_db import scalar

CONTEXT = {
    "actor_id": "u42",
    "actor_email": "ann@example.com",
    "actor_name": "Ann",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0 (X11)",
    "tenant_id": "t1",
    "request_id": "req-1",
}


def _drain(dsn: str) -> int:
    return Worker(dsn, poll_interval=0.1).run(once=True)


# A worker asleep holds the wake-up lock (revision 0005), exclusively, in its database.
ASLEEP_SQL = """select count(*) from pg_locks where locktype = 'advisory' and classid = 1635083369
                   and objid = 1952735777 and objsubid = 2 and mode = 'ExclusiveLock' and granted
                   and database = (select oid from pg_database where datname = current_database())"""


class CountingWorker(Worker):
    """A worker that counts its drains and the heartbeats it writes, and notes its wake-up lock states."""

    drains: int = 0
    beats: int = 0
    states: tuple[str, ...] = ()

    def _hold_wakeup(self, conn: psycopg.Connection[Any]) -> str:
        state = super()._hold_wakeup(conn)
        self.states += (state,)
        return state

    def _drain(self, conn: psycopg.Connection[Any]) -> int:
        self.drains += 1
        return super()._drain(conn)

    def _beat(self, conn: psycopg.Connection[Any], *, force: bool = False) -> None:
        before = self._last_beat
        super()._beat(conn, force=force)
        self.beats += self._last_beat != before


@contextmanager
def _worker_thread(dsn: str, *, asleep: bool = True) -> Iterator[CountingWorker]:
    """A worker in a thread, poll 30 s; when asleep, returned once it sleeps holding the wake-up lock."""
    worker = CountingWorker(dsn, poll_interval=30.0)  # a poll could not explain a fast delivery
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as watcher:
            deadline = time.monotonic() + 10
            while asleep and not scalar(watcher, ASLEEP_SQL):  # asleep: every emit now sends NOTIFY
                assert time.monotonic() < deadline, "the worker never went to sleep"
                time.sleep(0.01)
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def running_worker(dsn: str) -> Iterator[Worker]:
    with _worker_thread(dsn) as worker:
        yield worker


def _wait_for(conn: psycopg.Connection[Any], where: str, params: Any = None, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if scalar(conn, f"select count(*) from auditdb.log where {where}", params):  # noqa: S608
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"no entry where {where} within {timeout} s")


@pytest.mark.parametrize("action", ["LOGIN", "LOGOUT", "LOGIN_FAILED", "PASSWORD_RESET", "REPORT_SHARED"])
def test_events_travel_with_context_and_metadata(action: str, conn: psycopg.Connection[Any], dsn: str) -> None:
    before = scalar(conn, "select clock_timestamp()")
    with conn.transaction(), auditdb.context(conn, **CONTEXT):
        queue_id = auditdb.emit(
            conn,
            action,
            entity_type="User",
            entity_id=42,
            entity_name="Ann",
            metadata={"method": "password", "attempt": 3, "nested": {"ok": True}},
        )
    after = scalar(conn, "select clock_timestamp()")
    assert queue_id > 0 and entries(conn) == []
    assert _drain(dsn) == 1
    [e] = entries(conn)
    assert (e["action"], e["entity_type"], e["entity_id"], e["entity_name"]) == (action, "User", "42", "Ann")
    assert (e["actor_id"], e["actor_email"], e["actor_name"], str(e["ip"]), e["user_agent"], e["tenant_id"]) == (
        "u42",
        "ann@example.com",
        "Ann",
        "203.0.113.7",
        "Mozilla/5.0 (X11)",
        "t1",
    )
    assert e["metadata"] == {"method": "password", "attempt": 3, "nested": {"ok": True}, "request_id": "req-1"}
    assert before <= e["occurred_at"] <= after
    assert e["table_name"] is None and e["changes"] is None and e["db_user"] == conn.info.user
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 0


def test_sql_emit_and_its_checks(conn: psycopg.Connection[Any], dsn: str) -> None:
    conn.execute("""select auditdb.emit('LOGIN_FAILED', entity_type => 'User', entity_id => null,
                    metadata => '{"email": "ann@example.com", "reason": "bad password"}')""")
    for bad, message in (("'login'", "not a valid action"), ("null", "not a valid action")):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            conn.execute(f"select auditdb.emit({bad})")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="JSON object"):
        conn.execute("select auditdb.emit('LOGIN', metadata => '[1]')")
    with pytest.raises(auditdb.AuditDBError, match="must match"):
        auditdb.emit(conn, "Login")
    assert _drain(dsn) == 1
    assert entries(conn)[0]["metadata"] == {"email": "ann@example.com", "reason": "bad password"}


def test_rolled_back_emit_never_appears_but_event_sender_survives(conn: psycopg.Connection[Any], dsn: str) -> None:
    with auditdb.EventSender(dsn) as sender:
        with pytest.raises(RuntimeError), conn.transaction():
            auditdb.emit(conn, "LOGIN", entity_id="u1")
            sender.emit(
                "LOGIN_FAILED", entity_type="User", metadata={"email": "x@example.com"}, context={"ip": "198.51.100.9"}
            )
            raise RuntimeError("the request fails")
    assert _drain(dsn) == 1
    [e] = entries(conn)
    assert e["action"] == "LOGIN_FAILED" and str(e["ip"]) == "198.51.100.9"


def test_notify_carries_only_the_queue_id_even_for_1mb_metadata(conn: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen auditdb_events")
        assert scalar(listener, "select auditdb.wakeup_hold()") == "held"  # as a sleeping worker does
        big = "x" * 1_000_000
        queue_id = auditdb.emit(conn, "DATA_EXPORTED", metadata={"blob": big})
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == [str(queue_id)]
    assert _drain(dsn) == 1
    assert len(entries(conn)[0]["metadata"]["blob"]) == 1_000_000


def _notified(listener: psycopg.Connection[Any], timeout: float = 0.3) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=timeout)]


def test_emit_notifies_only_while_a_worker_sleeps_or_is_about_to(conn: psycopg.Connection[Any], dsn: str) -> None:
    # The wake-up handshake (revision 0005): NOTIFY serialises commits, so emit sends it only
    # when a worker holds (or waits for) the wake-up lock; a worker takes it before sleeping,
    # which waits for the emitting transactions that skipped NOTIFY to end.
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as worker,
        psycopg.connect(dsn, autocommit=True) as other_worker,
    ):
        listener.execute("listen auditdb_events")
        awake = auditdb.emit(conn, "LOGIN", entity_id="awake")  # no worker asleep: no NOTIFY
        assert _notified(listener) == []
        assert scalar(worker, "select auditdb.wakeup_hold()") == "held"
        asleep = auditdb.emit(conn, "LOGIN", entity_id="asleep")
        assert _notified(listener) == [str(asleep)]
        assert scalar(other_worker, "select auditdb.wakeup_hold(10)") == "worker"
        assert scalar(worker, "select auditdb.wakeup_release()") is True

        with psycopg.connect(dsn) as emitter:  # a transaction that emitted without NOTIFY, still open
            in_flight = auditdb.emit(emitter, "LOGIN", entity_id="in-flight")
            started = time.monotonic()
            assert scalar(worker, "select auditdb.wakeup_hold(50)") == "busy"
            assert time.monotonic() - started >= 0.05
            emitter.commit()
        assert _notified(listener) == []
        assert scalar(worker, "select auditdb.wakeup_hold(50)") == "held"
        # What the worker drains after taking the lock holds every event sent without NOTIFY.
        queued = [r[0] for r in worker.execute("select id from auditdb.event_queue order by id")]
        assert queued == [awake, asleep, in_flight]
        assert scalar(worker, "select auditdb.wakeup_release()") is True
        # Called inside a transaction, it leaves the transaction's lock_timeout as it found it.
        with worker.transaction():
            worker.execute("set local lock_timeout = '7s'")
            assert scalar(worker, "select auditdb.wakeup_hold(10)") == "held"
            assert scalar(other_worker, "select auditdb.wakeup_hold(10)") == "worker"
            assert scalar(worker, "select current_setting('lock_timeout')") == "7s"
        assert scalar(worker, "select auditdb.wakeup_release()") is True
        with psycopg.connect(dsn) as emitter, other_worker.transaction():
            auditdb.emit(emitter, "LOGIN", entity_id="late")  # no worker asleep: takes the lock shared
            other_worker.execute("set local lock_timeout = '7s'")
            assert scalar(other_worker, "select auditdb.wakeup_hold(10)") == "busy"
            assert scalar(other_worker, "select current_setting('lock_timeout')") == "7s"


def test_a_sleeping_worker_in_another_database_changes_nothing_here(
    conn: psycopg.Connection[Any], dsn: str, pg_server: Any
) -> None:
    # Advisory locks belong to a database: a worker asleep in another database of the cluster
    # neither makes emitters here NOTIFY nor keeps a worker here from telling 'busy' from 'worker'.
    with (
        psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as elsewhere,
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as worker,
        psycopg.connect(dsn) as emitter,
    ):
        elsewhere.execute("select pg_advisory_lock(1635083369, 1952735777)")
        listener.execute("listen auditdb_events")
        auditdb.emit(emitter, "LOGIN", entity_id="open")
        assert scalar(worker, "select auditdb.wakeup_hold(10)") == "busy"
        emitter.commit()
        assert _notified(listener) == []
        assert scalar(worker, "select auditdb.wakeup_hold(10)") == "held"


def test_a_worker_takes_over_when_the_sleeping_one_is_gone(conn: psycopg.Connection[Any], dsn: str) -> None:
    # Another session sleeps holding the wake-up lock, so the worker sleeps without it; then that
    # session goes (a killed worker) and emitters stop sending NOTIFY. The worker must notice soon.
    holder = psycopg.connect(dsn, autocommit=True)
    assert scalar(holder, "select auditdb.wakeup_hold()") == "held"
    with _worker_thread(dsn, asleep=False) as worker:
        deadline = time.monotonic() + 10
        while "worker" not in worker.states:  # it found the lock taken and sleeps without it
            assert time.monotonic() < deadline, worker.states
            time.sleep(0.01)
        holder.close()
        auditdb.emit(conn, "LOGIN", entity_id="after-holder")  # no worker asleep now: no NOTIFY
        assert _wait_for(conn, "entity_id = 'after-holder'", timeout=5) < 1.0


def test_a_listening_worker_misses_no_event_whatever_its_phase(conn: psycopg.Connection[Any], dsn: str) -> None:
    # Emitters in short bursts, some holding their transaction open a while, so events arrive
    # while the worker drains, lingers, takes the wake-up lock and sleeps. Its poll is 30 s: an
    # event that skipped NOTIFY and missed the drain after the lock would show as a 30 s wait.
    late: list[float] = []

    def emitter(n: int) -> None:
        rng = random.Random(n)
        with psycopg.connect(dsn) as c:
            for burst in range(12):
                for i in range(rng.randint(1, 15)):
                    key = f"{n}-{burst}-{i}"
                    auditdb.emit(c, "LOGIN", entity_id=key)
                    if rng.random() < 0.2:
                        time.sleep(rng.uniform(0, 0.06))  # still in the transaction
                    c.commit()
                    committed = time.monotonic()
                    waited = 0.0
                    while not scalar(c, "select count(*) from auditdb.log where entity_id = %s", (key,)):
                        c.rollback()
                        waited = time.monotonic() - committed
                        if waited > 5:
                            break
                        time.sleep(0.005)
                    c.rollback()
                    late.append(waited)
                time.sleep(rng.uniform(0, 0.1))

    with _worker_thread(dsn):
        emitters = [threading.Thread(target=emitter, args=(n,)) for n in range(4)]
        for t in emitters:
            t.start()
        for t in emitters:
            t.join(timeout=120)
    assert len(late) >= 48
    assert max(late) < 1.0, sorted(late)[-5:]
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 0


def test_a_worker_wakes_once_for_many_notifications_and_beats_once_a_second(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with _worker_thread(dsn) as worker:
        drains_asleep = worker.drains
        with conn.transaction():  # 300 notifications delivered at one commit
            for n in range(300):
                auditdb.emit(conn, "LOGIN", entity_id=f"burst-{n}")
        _wait_for(conn, "entity_id = 'burst-299'")
        time.sleep(0.2)
        assert worker.processed == 300
        # One wake-up takes the 300 notifications and one drain logs them; a few more find the
        # queue empty (after the linger, after taking the lock). Not a wake-up per notification.
        assert worker.drains - drains_asleep <= 10, worker.drains - drains_asleep

        beats, drains = worker.beats, worker.drains
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 2.5:  # a steady trickle keeps it draining
            auditdb.emit(conn, "LOGIN", entity_id=f"trickle-{n}")
            n += 1
            time.sleep(0.005)
        _wait_for(conn, "entity_id = %s", (f"trickle-{n - 1}",))
        # Many drains in 2.5 s, but a heartbeat (one committed write) at most once a second.
        assert worker.processed == 300 + n
        assert worker.drains - drains > 20, (worker.drains - drains, n)
        assert worker.beats - beats <= 4, worker.beats - beats


def test_a_batch_never_exceeds_its_size_whatever_the_plan(conn: psycopg.Connection[Any]) -> None:
    # A LIMIT inside `delete … where id in (select … limit n for update skip locked)` holds only
    # if the subquery runs once. A plan cached while the queue was nearly empty (a nested loop
    # over the queue, rescanning the subquery) claimed thousands of events in one batch of 500.
    conn.execute("analyze auditdb.event_queue")
    for _ in range(8):  # PL/pgSQL now keeps a generic plan made for an empty queue
        assert scalar(conn, "select processed from auditdb.process_events(500)") == 0
    with conn.transaction():
        conn.execute("insert into auditdb.event_queue (action) select 'LOGIN' from generate_series(1, 3000)")
    for setting in ("", "enable_material", "enable_hashjoin"):
        with conn.transaction():
            if setting:
                conn.execute(f"set local {setting} = off")
            assert scalar(conn, "select processed from auditdb.process_events(500)") == 500, setting
    assert scalar(conn, "select count(*) from auditdb.event_queue") == 1500


def test_metadata_is_masked_like_columns(conn: psycopg.Connection[Any], dsn: str, track: Track) -> None:
    track("", '[defaults]\nmask = ["password*"]\nmask_last4 = ["*token*"]\n')
    auditdb.emit(conn, "PASSWORD_RESET", metadata={"password": "hunter2", "user": {"reset_token": "tok_123456789"}})
    _drain(dsn)
    assert entries(conn)[0]["metadata"] == {"password": "***", "user": {"reset_token": "***6789"}}
    assert "hunter2" not in json.dumps(entries(conn)[0], default=str)


def test_running_worker_logs_within_a_second_via_notify(conn: psycopg.Connection[Any], running_worker: Worker) -> None:
    auditdb.emit(conn, "LOGIN", entity_id="fast")
    assert _wait_for(conn, "entity_id = 'fast'", timeout=5) < 1.0


def test_polling_worker_logs_within_the_poll_interval(conn: psycopg.Connection[Any], dsn: str) -> None:
    worker = Worker(dsn, poll_interval=0.5, listen=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        auditdb.emit(conn, "LOGIN", entity_id="polled")
        assert _wait_for(conn, "entity_id = 'polled'", timeout=5) < 0.5 + 0.5
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_worker_reconnects_after_its_connection_is_killed(
    conn: psycopg.Connection[Any], running_worker: Worker
) -> None:
    conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'auditdb worker'")
    auditdb.emit(conn, "LOGIN", entity_id="after-kill")
    assert _wait_for(conn, "entity_id = 'after-kill'", timeout=10) < 10


def test_events_are_logged_in_queue_order_with_a_heartbeat(conn: psycopg.Connection[Any], dsn: str) -> None:
    for n in range(1200):
        auditdb.emit(conn, "LOGIN", entity_id=str(n))
    worker = Worker(dsn, batch_size=500)
    assert worker.run(once=True) == 1200
    ids = [int(e["entity_id"]) for e in entries(conn)]
    assert ids == list(range(1200))
    beat = conn.execute("select worker, processed from auditdb.worker_heartbeat").fetchone()
    assert beat == (worker.name, 1200)


def test_worker_keeps_partitions_ahead(conn: psycopg.Connection[Any], dsn: str) -> None:
    furthest = scalar(conn, "select 'log_' || to_char(auditdb.month_start(3) at time zone 'UTC', 'YYYY_MM')")
    conn.execute(f"drop table auditdb.{furthest}")
    assert scalar(conn, "select to_regclass(%s)", (f"auditdb.{furthest}",)) is None
    Worker(dsn).run(once=True)
    assert scalar(conn, "select to_regclass(%s)::text", (f"auditdb.{furthest}",)) == f"auditdb.{furthest}"

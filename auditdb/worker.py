"""`auditdb worker`: moves queued events into auditdb.log, woken by NOTIFY, polling as a fallback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg

from auditdb.db import connect, describe_error, require_installed
from auditdb.errors import AuditDBError, NotInstalledError, PermissionDenied

__all__ = ["Worker"]

log = logging.getLogger("auditdb.worker")

CHANNEL = "auditdb_events"
PARTITION_UPKEEP_SECONDS = 3600.0
# How often the worker seals (auditdb.seal): an entry is sealed within about two of these once
# every transaction that was running when it was written has ended.
SEAL_SECONDS = 5.0
SEAL_BATCH = 100_000
# A busy worker loops hundreds of times a second; its heartbeat (one committed write) need not.
BEAT_SECONDS = 1.0
# While events keep coming, the worker looks again this soon instead of sleeping: awake, it does
# not hold the wake-up lock, so emitters skip NOTIFY (whose commits PostgreSQL serialises).
LINGER_SECONDS = 0.01
# How long to wait for emitting transactions to end before sleeping, and, when one stays open
# (its events came without NOTIFY), how soon to look again.
HOLD_WAIT_MS = 20
RETRY_SECONDS = 0.05
# Another worker sleeps holding the lock: its wake-up wakes us too, but if it dies (its session
# lock goes with it) emitters stop sending NOTIFY, so look again this soon rather than after a poll.
HOLDER_RETRY_SECONDS = 0.25


@dataclass
class Worker:
    """Drains auditdb.event_queue; safe to run several at once and to kill at any moment."""

    dsn: str | None = None
    batch_size: int = 500
    poll_interval: float = 0.5
    listen: bool = True
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    processed: int = 0
    _stop: bool = False
    _started: datetime = field(default_factory=lambda: datetime.now(UTC))
    _last_upkeep: float = 0.0
    _last_beat: float = 0.0
    _last_seal: float = 0.0
    _sealing: bool = True

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Ask the worker to finish the batch in hand and return (the SIGTERM/SIGINT handler)."""
        if not self._stop:
            log.info("stopping after the current batch (signal %s)", signum)
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, once: bool = False) -> int:
        """Process events until stopped (or, with once, until the queue is empty); returns the count."""
        backoff = 1.0
        while not self._stop:
            try:
                with connect(self.dsn, autocommit=True) as conn:
                    require_installed(conn)
                    conn.execute("set application_name = 'auditdb worker'")
                    if self.listen:
                        conn.execute(f"listen {CHANNEL}")
                    log.info(
                        "worker %s connected; %s",
                        self.name,
                        "listening" if self.listen else f"polling every {self.poll_interval:g} s",
                    )
                    backoff = 1.0
                    if self._serve(conn, once):
                        return self.processed
            except (NotInstalledError, PermissionDenied):
                raise
            except AuditDBError as e:
                if once:
                    raise
                log.error("worker %s: %s; retrying in %.0f s", self.name, e, backoff)
            except psycopg.Error as e:
                if once:
                    raise describe_error(e) from e
                log.error(
                    "worker %s lost its connection (%s); retrying in %.0f s", self.name, describe_error(e), backoff
                )
            if self._stop:
                break
            self._sleep(backoff)
            backoff = min(backoff * 2, 30.0)
        return self.processed

    def _serve(self, conn: psycopg.Connection[Any], once: bool) -> bool:
        """Drain, then wait for a notification or the poll interval; True when done.

        The wake-up handshake (revision 0005): emitters NOTIFY only when they cannot take the
        wake-up lock shared, i.e. while a worker holds it. So a listening worker sleeps only
        holding it, and takes it only after every emitting transaction that skipped NOTIFY has
        ended, draining once more after that; awake, it lets it go.
        """
        while not self._stop:
            self._upkeep(conn)
            found = self._drain(conn)
            self._seal(conn, force=once)
            self._beat(conn, force=once)
            if once:
                return True
            if not self.listen:
                self._wait(conn, self._poll_wait())
            elif found:
                self._wait(conn, LINGER_SECONDS, notified=False)
            else:
                self._sleep_listening(conn)
        self._beat(conn, force=True)
        return True

    def _poll_wait(self) -> float:
        """The poll interval, shortened so that sealing keeps its pace (a long --poll-interval included)."""
        if not self._sealing:
            return self.poll_interval
        due = SEAL_SECONDS - (time.monotonic() - self._last_seal)
        return max(0.05, min(self.poll_interval, due))

    def _hold_wakeup(self, conn: psycopg.Connection[Any]) -> str:
        """Try to take the wake-up lock: 'held', 'worker' (another has it) or 'busy' (an emitter)."""
        row = conn.execute("select auditdb.wakeup_hold(%s)", (HOLD_WAIT_MS,)).fetchone()
        return str(row[0]) if row else "busy"

    def _sleep_listening(self, conn: psycopg.Connection[Any]) -> None:
        state = self._hold_wakeup(conn)
        if state == "held":
            # (A lost connection takes its session lock with it.)
            if self._drain(conn) == 0:  # events of emitters that ended while we took the lock
                self._wait(conn, self._poll_wait())
            conn.execute("select auditdb.wakeup_release()")
        elif state == "worker":
            self._wait(conn, min(self._poll_wait(), HOLDER_RETRY_SECONDS))
        else:
            self._wait(conn, RETRY_SECONDS)  # an emitting transaction that skipped NOTIFY is still open

    def _drain(self, conn: psycopg.Connection[Any]) -> int:
        """Process batches until the queue is empty; returns how many events were logged."""
        total = 0
        while not self._stop:
            with conn.transaction():
                row = conn.execute("select * from auditdb.process_events(%s)", (self.batch_size,)).fetchone()
            count = int(row[0]) if row else 0
            if count == 0:
                break
            total += count
            self.processed += count
            lag = row[1].total_seconds() if row and row[1] is not None else 0.0
            log.info("logged %d event(s), oldest waited %.3f s", count, lag)
        return total

    def _wait(self, conn: psycopg.Connection[Any], seconds: float, *, notified: bool = True) -> None:
        """Sleep up to seconds; a notification ends it early (when notified and listening)."""
        deadline = time.monotonic() + seconds
        while not self._stop:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            slice_ = min(remaining, 0.5)
            if self.listen and notified:
                woken = False
                for _ in conn.notifies(timeout=slice_, stop_after=1):
                    woken = True  # the generator runs to its end, so the connection is free again
                if woken:
                    # One drain serves every notification already here (one per emitted event):
                    # take them now, for at most 1 ms in all, rather than waking once per event
                    # to find the queue empty.
                    for _ in conn.notifies(timeout=0.001):
                        pass
                    return
            else:
                time.sleep(slice_)

    def _beat(self, conn: psycopg.Connection[Any], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self._last_beat and now - self._last_beat < BEAT_SECONDS:
            return
        self._last_beat = now
        conn.execute("select auditdb.worker_beat(%s, %s, %s)", (self.name, self._started, self.processed))

    def _upkeep(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if self._last_upkeep and now - self._last_upkeep < PARTITION_UPKEEP_SECONDS:
            return
        self._last_upkeep = now
        try:
            with conn.transaction():
                created = [r[0] for r in conn.execute("select auditdb.ensure_partitions(3)").fetchall()]
            for name in created:
                log.info("created partition auditdb.%s", name)
            # A month that closed gets its search index: one month per upkeep (seconds each), so
            # events wait at most one build.
            with conn.transaction():
                row = conn.execute("select auditdb.index_closed_month()").fetchone()
            if row and row[0]:
                log.info("built search index auditdb.%s", row[0])
        except psycopg.Error as e:
            log.error("partition upkeep failed: %s", describe_error(e))

    def _seal(self, conn: psycopg.Connection[Any], *, force: bool = False) -> None:
        """Seal what can be sealed (auditdb.seal), every SEAL_SECONDS; never stops the worker."""
        now = time.monotonic()
        if not self._sealing or (not force and self._last_seal and now - self._last_seal < SEAL_SECONDS):
            return
        self._last_seal = now
        try:
            while True:
                with conn.transaction():
                    row = conn.execute("select auditdb.seal(%s)", (SEAL_BATCH,)).fetchone()
                if not row or row[0] < SEAL_BATCH:
                    break
                log.info("sealed %s entries", row[0])
        except psycopg.errors.InsufficientPrivilege as e:
            self._sealing = False
            log.error("not sealing: %s (the worker seals as an admin: `auditdb grant ROLE --admin`)", describe_error(e))
        except psycopg.Error as e:
            log.error("sealing failed: %s", describe_error(e))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

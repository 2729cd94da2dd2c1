"""Events: emit → worker → auditdb.log throughput and emit-to-logged latency (p50/p95/p99/max).

Runs its own throw-away PostgreSQL (the system one by default, durable: fsync and
synchronous_commit on unless told otherwise), installs auditdb, starts the real worker
(`python -m auditdb --dsn … worker`) as a subprocess, and has N emitter processes, each on its own
connection, emit events at a fixed offered rate through the public API for a while. Each offered
rate in --rate is one step on the same server and worker; 0 means as fast as the emitters go.

Latency of an event: from the emitter's clock just before the emit call (stored in the event's
metadata as `t`) to the commit of the worker transaction that wrote its log entry
(pg_xact_commit_timestamp of the entry's xmin; the server runs with track_commit_timestamp = on,
on this host, so both stamps come from one clock). PostgreSQL takes that stamp just before the
commit record is flushed, so it is a lower bound of when the entry became visible. An observer
connection polls the log for new ids every --poll seconds and notes when each first appears: an
upper bound, late by at most one poll period plus the poll query. Both are reported.

    python bench/events.py [--server system-15] [--rate 2500,5000,0] [--seconds 30] [--emitters 4]
                           [--api emit|sender] [--synchronous-commit on|off|on,off] [--output bench/EVENTS.md]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import add_server_option, finish, pick_server

import auditdb
from auditdb.embedded import LocalServer, server_version
from auditdb.install import install

EMITTER_APP = "auditdb-bench emitter"
OBSERVER_APP = "auditdb-bench observer"
WORKER_APP = "auditdb worker"  # the worker sets this itself
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
FUNCTIONS = ("emit", "process_events", "worker_beat", "set_context", "current_context", "context_ip")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def settings(synchronous_commit: str) -> dict[str, str]:
    """Server settings: PostgreSQL's durable defaults, plus what the measurement needs."""
    return {
        "shared_buffers": "256MB",
        "max_connections": "100",
        "synchronous_commit": synchronous_commit,
        "track_commit_timestamp": "on",  # when the worker's transaction committed each entry
        "track_functions": "all",  # calls and time of auditdb.emit / process_events / worker_beat
        "log_min_messages": "warning",
    }


# --- emitters (child processes) -------------------------------------------------------------------


def emitter(
    dsn: str,
    index: int,
    emitters: int,
    rate: float,
    seconds: float,
    api: str,
    tag: str,
    ready: Any,
    go: Any,
    start_at: Any,
    results: Any,
    release: Any,
) -> None:
    """Emit events at rate/emitters per second from start_at for seconds; report count and call times."""
    try:
        app_dsn = f"{dsn} application_name='{EMITTER_APP}'"
        sender = auditdb.EventSender(app_dsn) if api == "sender" else None
        conn = psycopg.connect(app_dsn, autocommit=True) if sender is None else None
        ready.put(index)
        go.wait()
        start = start_at.value
        end = start + seconds
        interval = emitters / rate if rate else 0.0
        due = start + index / rate if rate else start
        durations = array("d")
        i = 0
        while True:
            now = time.time()
            if interval and due > now:
                if due >= end:
                    break
                time.sleep(due - now)
            elif now >= end:
                break
            t = time.time()
            metadata = {
                "run": tag,
                "ev": f"{index}:{i}",
                "t": t,
                "method": "password",
                "email": f"u{i % 500}@example.com",
            }
            if conn is not None:
                auditdb.emit(conn, "LOGIN", entity_type="User", entity_id=f"u{i % 500}", metadata=metadata)
            else:
                sender.emit(
                    "LOGIN",
                    entity_type="User",
                    entity_id=f"u{i % 500}",
                    metadata=metadata,
                    context={
                        "actor_id": f"u{i % 500}",
                        "actor_email": f"u{i % 500}@example.com",
                        "ip": "203.0.113.7",
                        "user_agent": USER_AGENT,
                        "tenant_id": f"t{i % 50}",
                        "request_id": f"req-{index}-{i}",
                    },
                )
            durations.append(time.time() - t)
            i += 1
            due += interval
        results.put(("done", index, i, durations))
        release.wait(120)  # stay alive (connections too) until the parent has read the CPU times
        if sender is not None:
            sender.close()
        if conn is not None:
            conn.close()
    except BaseException:
        results.put(("error", index, traceback.format_exc(), None))


# --- observer (a thread of the main process) ------------------------------------------------------


class Observer(threading.Thread):
    """Polls the log for new ids (first-seen times), the queue length and the backends' wait events."""

    def __init__(self, dsn: str, after_id: int, poll: float) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.last_id = after_id
        self.poll = poll
        self.seen: dict[int, float] = {}
        self.queue: list[tuple[float, int]] = []
        self.waits: dict[str, Counter[str]] = {"emitter": Counter(), "worker": Counter()}
        self.polls = 0
        self.poll_started = 0.0
        self.poll_ended = 0.0
        self.error: str | None = None
        self.window = (math.inf, math.inf)  # wait events are sampled only inside (the emitting time)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        try:
            with psycopg.connect(f"{self.dsn} application_name='{OBSERVER_APP}'", autocommit=True) as conn:
                self.poll_started = last_queue = last_waits = time.time()
                while not self._stop_event.is_set():
                    rows = conn.execute(
                        "select id from auditdb.log where id > %s order by id", (self.last_id,)
                    ).fetchall()
                    now = time.time()
                    for (entry_id,) in rows:
                        self.seen[entry_id] = now
                    if rows:
                        self.last_id = rows[-1][0]
                    self.polls += 1
                    if now - last_waits >= 0.1 and self.window[0] <= now <= self.window[1]:
                        last_waits = now
                        for app, state, wtype, wevent in conn.execute(
                            "select application_name, state, wait_event_type, wait_event from pg_stat_activity "
                            "where application_name in (%s, %s)",
                            (EMITTER_APP, WORKER_APP),
                        ):
                            who = "emitter" if app == EMITTER_APP else "worker"
                            if state == "active":
                                what = f"{wtype}: {wevent}" if wtype else "running (CPU)"
                            else:
                                what = f"{state}, waiting for its client" if wevent == "ClientRead" else f"{state}"
                            self.waits[who][what] += 1
                    if now - last_queue >= 1.0:
                        last_queue = now
                        count = conn.execute("select count(*) from auditdb.event_queue").fetchone()
                        self.queue.append((now, int(count[0]) if count else 0))
                    self._stop_event.wait(self.poll)
                self.poll_ended = time.time()
        except BaseException:
            self.error = traceback.format_exc()

    def mean_poll(self) -> float:
        return (self.poll_ended - self.poll_started) / max(self.polls, 1)


# --- CPU accounting from /proc ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                found.append(int(entry.name))
    return found


def cpu_pressure_us() -> int:
    """Microseconds during which some runnable task waited for a CPU (0 where PSI is missing)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return 0
    return int(some.rsplit("total=", 1)[1])


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# --- one step -----------------------------------------------------------------------------------


@dataclass
class Step:
    rate: int
    seconds: float
    emitters: int
    sync: str = "on"
    cpu_pressure: float = 0.0
    emitted: int = 0
    emit_calls: list[float] = field(default_factory=list)
    logged: int = 0
    distinct: int = 0
    unexpected: int = 0
    in_window: int = 0
    backlog_end: int = 0
    backlog_max: int = 0
    backlog_samples: list[tuple[float, int]] = field(default_factory=list)
    drained_after: float = 0.0
    drained: bool = True
    worker_exit: int = 0  # the worker's exit status when stopped after this step (SIGTERM: 0)
    still_queued: int = 0
    worker_cpu_after: float = 0.0
    committed: list[float] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)
    server_side: list[float] = field(default_factory=list)
    mean_poll: float = 0.0
    batches: list[int] = field(default_factory=list)
    functions: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_cpu: float = 0.0
    waits: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.rate:,}" if self.rate else "max"

    @property
    def emit_rate(self) -> float:
        return self.emitted / self.seconds

    @property
    def drain_rate(self) -> float:
        return self.in_window / self.seconds

    def sustained(self) -> bool:
        """Offered rate met, drain kept up (backlog bounded), nothing lost, p99 ≤ 1 s."""
        keeps_up = (not self.rate or self.emit_rate >= 0.97 * self.rate) and self.drain_rate >= 0.97 * self.emit_rate
        complete = self.drained and self.logged == self.distinct == self.emitted
        return keeps_up and complete and pct(self.committed, 99) <= 1.0

    @property
    def lost(self) -> int:
        """Emitted, not logged, and not in the queue either."""
        return self.emitted - (self.distinct - self.unexpected) - self.still_queued


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def function_stats(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, float, float]]:
    rows = conn.execute(
        "select funcname, calls, total_time, self_time from pg_stat_user_functions where schemaname = 'auditdb'"
    ).fetchall()
    return {name: (calls, total, own) for name, calls, total, own in rows if name in FUNCTIONS}


def backend_pids(conn: psycopg.Connection[Any]) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {"emitter": [], "worker": [], "observer": []}
    for app, pid in conn.execute("select application_name, pid from pg_stat_activity where application_name <> ''"):
        who = {EMITTER_APP: "emitter", WORKER_APP: "worker", OBSERVER_APP: "observer"}.get(app)
        if who:
            pids[who].append(pid)
    return pids


def run_step(
    server: LocalServer, worker: subprocess.Popen[bytes], worker_log: Path, args: argparse.Namespace, rate: int, n: int
) -> Step:
    dsn = server.dsn()
    step = Step(rate=rate, seconds=args.seconds, emitters=args.emitters)
    tag = f"step{n}"
    ctx = mp.get_context("spawn")
    ready, results, go, release = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=emitter,
            daemon=True,
            args=(dsn, i, args.emitters, rate, args.seconds, args.api, tag, ready, go, start_at, results, release),
        )
        for i in range(args.emitters)
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        after_id = conn.execute("select coalesce(max(id), 0) from auditdb.log").fetchone()[0]  # type: ignore[index]
        for p in procs:
            p.start()
        waiting_until = time.time() + 60
        for _ in procs:
            while True:
                try:
                    ready.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not results.empty():
                        _, index, payload, _ = results.get()
                        raise RuntimeError(f"emitter {index} failed:\n{payload}") from None
                    if time.time() > waiting_until or any(p.exitcode is not None for p in procs):
                        raise RuntimeError("an emitter did not start") from None
        observer = Observer(dsn, after_id, args.poll)
        observer.start()
        time.sleep(0.3)
        before_functions = function_stats(conn)
        pids = backend_pids(conn)
        postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
        tracked = {
            "emitter processes (Python, psycopg)": [p.pid for p in procs if p.pid],
            "emitter backends (PostgreSQL)": pids["emitter"],
            "worker process (Python)": [worker.pid],
            "worker backend (PostgreSQL)": pids["worker"],
            "observer (this script) and its backend": [os.getpid(), *pids["observer"]],
        }
        known = {pid for group in tracked.values() for pid in group}
        tracked["other PostgreSQL processes (WAL writer, checkpointer…; not short-lived autovacuum workers)"] = [
            pid for pid in children_of(postmaster) if pid not in known
        ]
        cpu_before = {pid: cpu_seconds(pid) for group in tracked.values() for pid in group}
        busy_before = machine_busy()
        pressure_before, pressure_started = cpu_pressure_us(), time.time()
        log_offset = worker_log.stat().st_size
        start_at.value = time.time() + 0.5
        observer.window = (start_at.value, start_at.value + args.seconds)
        go.set()
        done: dict[int, tuple[int, array[float]]] = {}
        deadline = start_at.value + args.seconds + 60
        while len(done) < len(procs):
            kind, index, payload, durations = results.get(timeout=max(1.0, deadline - time.time()))
            if kind == "error":
                raise RuntimeError(f"emitter {index} failed:\n{payload}")
            done[index] = (payload, durations)
        end = start_at.value + args.seconds
        # The emitters have stopped: the backlog now, then how long the worker takes to catch up.
        step.backlog_end = int(conn.execute("select count(*) from auditdb.event_queue").fetchone()[0])  # type: ignore[index]
        busy_after = machine_busy()
        step.cpu_pressure = (cpu_pressure_us() - pressure_before) / 1e6 / (time.time() - pressure_started)
        cpu_after = {pid: cpu_seconds(pid) for pid in cpu_before}
        for group, members in tracked.items():
            step.cpu[group] = sum(
                (cpu_after[pid] or 0.0) - (cpu_before[pid] or 0.0)
                for pid in members
                if cpu_before[pid] is not None and cpu_after[pid] is not None
            )
        release.set()
        for p in procs:
            p.join()
        step.machine_cpu = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1]) * (os.cpu_count() or 1)
        step.emitted = sum(count for count, _ in done.values())
        step.emit_calls = [d for _, durations in done.values() for d in durations]
        drain_deadline = time.time() + args.drain_timeout
        step.drained = False
        while time.time() < drain_deadline:
            if conn.execute("select not exists (select from auditdb.event_queue)").fetchone()[0]:  # type: ignore[index]
                step.drained = True
                break
            time.sleep(0.05)
        step.drained_after = max(0.0, time.time() - end)
        # Wait for the observer to see every entry (bounded), then stop it.
        seen_deadline = time.time() + 10
        while len(observer.seen) < step.emitted and time.time() < seen_deadline:
            time.sleep(0.05)
        observer.stop()
        if observer.error:
            raise RuntimeError(f"observer failed:\n{observer.error}")
        step.mean_poll = observer.mean_poll()
        step.backlog_samples = [(t - start_at.value, c) for t, c in observer.queue if t <= end + 0.5]
        step.backlog_max = max([c for _, c in step.backlog_samples] + [step.backlog_end])
        step.waits = observer.waits
        # Once the queue is empty, an idle worker should use no CPU: measure it for 5 s.
        worker_pids = tracked["worker process (Python)"] + tracked["worker backend (PostgreSQL)"]
        idle_before = [cpu_seconds(pid) or 0.0 for pid in worker_pids]
        time.sleep(5.0)
        step.worker_cpu_after = (
            sum((cpu_seconds(pid) or 0.0) - b for pid, b in zip(worker_pids, idle_before, strict=True)) / 5.0
        )
        # Wait out PostgreSQL's flush of an idle backend's function stats (every 10 s at most).
        time.sleep(10.5)
        after_functions = function_stats(conn)
        step.functions = {
            name: (
                calls - before_functions.get(name, (0, 0.0, 0.0))[0],
                total - before_functions.get(name, (0, 0.0, 0.0))[1],
                own - before_functions.get(name, (0, 0.0, 0.0))[2],
            )
            for name, (calls, total, own) in after_functions.items()
        }
        rows = conn.execute(
            "select id, metadata->>'ev', (metadata->>'t')::float8, extract(epoch from occurred_at)::float8, "
            "extract(epoch from pg_xact_commit_timestamp(xmin))::float8 "
            "from auditdb.log where id > %s and metadata->>'run' = %s",
            (after_id, tag),
        ).fetchall()
        step.still_queued = int(
            conn.execute("select count(*) from auditdb.event_queue where metadata->>'run' = %s", (tag,)).fetchone()[0]  # type: ignore[index]
        )
    expected = {f"{index}:{i}" for index, (count, _) in done.items() for i in range(count)}
    step.logged = len(rows)
    step.distinct = len({ev for _, ev, *_ in rows})
    step.unexpected = len({ev for _, ev, *_ in rows} - expected)
    for entry_id, _, t, occurred, committed in rows:
        step.committed.append(committed - t)
        step.server_side.append(committed - occurred)
        if entry_id in observer.seen:
            step.seen.append(observer.seen[entry_id] - t)
        if committed <= end:
            step.in_window += 1
    text = worker_log.read_text(errors="replace")[log_offset:]
    step.batches = [int(m) for m in re.findall(r"logged (\d+) event\(s\)", text)]
    return step


# --- the report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def describe_code() -> str:
    """The auditdb commit measured, and whether auditdb/, sql/ or migrations/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %ad", "--date=format:%Y-%m-%d %H:%M"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "auditdb", "sql", "migrations"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "auditdb (not a git checkout)"
    return f"auditdb at commit {head}" + (" with uncommitted changes in auditdb/, sql/ or migrations/" if dirty else "")


def describe_machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({model or platform.machine()}), {mem:.0f} GB RAM, Linux {platform.release()}"


def report(
    steps: list[Step],
    args: argparse.Namespace,
    key: str,
    version: str,
    machine: str,
    load: tuple[float, ...],
    code: str = "",
) -> list[str]:
    api = {
        "emit": '`auditdb.emit(conn, "LOGIN", entity_type="User", entity_id=…, metadata={…})` on an autocommit '
        "connection: one statement, one transaction per event, no session context",
        "sender": '`auditdb.EventSender(dsn).emit("LOGIN", …, context={actor, e-mail, IP, user agent, tenant, '
        "request id})`: BEGIN, set_context, emit, COMMIT per event",
    }[args.api]
    lines = [
        "# Events benchmark: emit → worker → auditdb.log",
        "",
        f"- machine: {machine}; load average before the run {load[0]:.2f}. Other jobs may share the machine: "
        "*machine CPU* is what the whole machine used while emitting, *CPU pressure* the share of that time some "
        "runnable task waited for a CPU (/proc/pressure/cpu)",
        f"- server: PostgreSQL {version} ({key}), a fresh one started by the script for each synchronous_commit "
        "setting; fsync on, shared_buffers 256MB, other settings PostgreSQL's defaults; "
        "track_commit_timestamp and track_functions on for the measurement",
        f"- command: `python bench/events.py --server {key} --rate {args.rate} --seconds {args.seconds:g} "
        f"--emitters {args.emitters} --api {args.api} --synchronous-commit {args.synchronous_commit} "
        f"--batch-size {args.batch_size} --poll {args.poll:g}"
        + (f" --worker-args '{args.worker_args}'" if args.worker_args else "")
        + f"`; {code}",
        f"- load: {args.emitters} emitter processes, each on its own connection, at offered rate / {args.emitters} "
        f"per second each on a fixed schedule (max: back to back), {args.seconds:g} s per step; {api}",
        f"- worker: the real one, `python -m auditdb --dsn … worker --batch-size {args.batch_size}"
        f"{' ' + args.worker_args if args.worker_args else ''}` (one process, LISTEN unless told otherwise), "
        "running through all the steps of a server",
        "- latency: from the emitter's clock just before the emit call (metadata `t`) to the commit of the "
        "worker transaction that logged the entry (`pg_xact_commit_timestamp(xmin)`, same host and clock). "
        "PostgreSQL stamps a commit just before flushing it, so this is a lower bound of when the entry became "
        f"visible. *p99 seen*: when an observer connection polling the log every {args.poll * 1000:g} ms first "
        "saw the entry, an upper bound, late by at most one poll period (mean measured below) plus the query",
        "- logged/s: entries whose worker transaction committed inside the emitting window, per second; "
        "backlog: `auditdb.event_queue` rows when the emitters stopped (in brackets the most seen in the 1 s "
        "samples); lost / dup: emitted events neither in the log nor still queued / logged more than once, by a "
        "per-event key; "
        "sustained: offered rate emitted (≥ 97 %), logged as fast as emitted (≥ 97 %), none lost, p99 ≤ 1 s",
        "",
        "| synchronous_commit | offered/s | emitted | emit/s | logged/s | backlog at end (max) | lost | dup "
        "| p50 ms | p95 ms | p99 ms | max ms | p99 seen ms | emit call p50 / p99 ms | machine CPU | CPU pressure "
        "| sustained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.sync} | {s.label} | {s.emitted:,} | {s.emit_rate:,.0f} | {s.drain_rate:,.0f} | "
            f"{s.backlog_end:,} ({s.backlog_max:,})"
            f"{'' if s.drained else f'; {s.still_queued:,} still queued {s.drained_after:.0f} s later'} | "
            f"{s.lost:,} | "
            f"{s.logged - s.distinct:,} | {ms(pct(s.committed, 50))} | {ms(pct(s.committed, 95))} | "
            f"{ms(pct(s.committed, 99))} | {ms(max(s.committed, default=float('nan')))} | "
            f"{ms(pct(s.seen, 99))} | {ms(pct(s.emit_calls, 50))} / {ms(pct(s.emit_calls, 99))} | "
            f"{s.machine_cpu:.2f} of {os.cpu_count()} | {s.cpu_pressure:.0%} | {'yes' if s.sustained() else 'no'} |"
        )
    lines.append("")
    for sync in dict.fromkeys(s.sync for s in steps):
        mine = [s for s in steps if s.sync == sync]
        sustained = [s.rate for s in mine if s.rate and s.sustained()]
        best = max(mine, key=lambda s: s.drain_rate)
        text = f"- synchronous_commit {sync}: "
        target = next((s for s in mine if s.rate == 5000), None)
        if target:
            met = target.sustained() and target.drain_rate >= 5000 * 0.97
            text += (
                f"target (≥ 5,000 events/s sustained, p99 emit-to-logged ≤ 1 s) **{'met' if met else 'missed'}**: "
                f"{target.emit_rate:,.0f} emitted/s, {target.drain_rate:,.0f} logged/s, p99 "
                f"{ms(pct(target.committed, 99))} ms. "
            )
        text += f"Highest offered rate sustained: {max(sustained):,}/s. " if sustained else "No rate sustained. "
        text += (
            f"Most logged per second in a step: {best.drain_rate:,.0f} (offered {best.label}, emitted "
            f"{best.emit_rate:,.0f}/s)."
        )
        lines.append(text)
    for s in steps:
        lines += ["", f"**synchronous_commit {s.sync}, offered {s.label}/s**", ""]
        lines.append(
            f"- emitted {s.emitted:,} in {s.seconds:g} s; backlog when the emitters stopped {s.backlog_end:,}, "
            + (
                f"queue empty {s.drained_after:.1f} s later"
                if s.drained
                else f"the worker had not caught up {s.drained_after:.0f} s later ({s.still_queued:,} of these events "
                "still queued when the script gave up; the latencies below are of the logged ones only)"
            )
            + "; backlog every second: "
            + ", ".join(f"{c:,}" for _, c in s.backlog_samples)
        )
        if s.batches:
            full = sum(1 for b in s.batches if b >= args.batch_size)
            lines.append(
                f"- worker batches (its log lines): {len(s.batches):,}, mean {sum(s.batches) / len(s.batches):.1f} "
                f"events, max {max(s.batches)}, {full} full ({args.batch_size})"
            )
        pe = s.functions.get("process_events", (0, 0.0, 0.0))
        beat = s.functions.get("worker_beat", (0, 0.0, 0.0))
        emit = s.functions.get("emit", (0, 0.0, 0.0))
        after = "the queue emptied" if s.drained else "the script stopped waiting"
        idle = f"in the 5 s after {after} the worker used {s.worker_cpu_after:.2f} cores"
        lines.append(
            f"- worker loops (emitting and after): {pe[0]:,} calls of auditdb.process_events "
            f"({max(pe[0] - len(s.batches), 0):,} found nothing), {beat[0]:,} of worker_beat; {idle}. "
            f"Server time: process_events {pe[1] / 1000:.1f} s "
            f"({pe[1] / max(sum(s.batches), 1) * 1000:.0f} µs per event logged), worker_beat {beat[1] / 1000:.1f} s, "
            f"auditdb.emit {emit[1] / 1000:.1f} s ({emit[1] / max(emit[0], 1) * 1000:.0f} µs per call, "
            f"{emit[0]:,} calls)"
        )
        if s.worker_exit:
            lines.append(
                f"- the worker, sent SIGTERM after this step, exited with status {s.worker_exit} "
                "(killed when a batch still ran 60 s later)"
            )
        lines.append(
            f"- latency, ms: committed p50 {ms(pct(s.committed, 50))}, p99 {ms(pct(s.committed, 99))}; seen by the "
            f"observer p50 {ms(pct(s.seen, 50))}, p99 {ms(pct(s.seen, 99))} (mean poll period "
            f"{s.mean_poll * 1000:.1f} ms); server side only (occurred_at → commit) p50 "
            f"{ms(pct(s.server_side, 50))}, p99 {ms(pct(s.server_side, 99))}"
        )
        total = sum(s.cpu.values())
        lines.append(
            f"- CPU while emitting, in cores ({total / s.seconds:.2f} in these processes, machine-wide "
            f"{s.machine_cpu:.2f}): " + "; ".join(f"{group} {sec / s.seconds:.2f}" for group, sec in s.cpu.items())
        )
        for who, counter in s.waits.items():
            samples = sum(counter.values())
            if samples:
                lines.append(
                    f"- {who} backends, {samples:,} samples of pg_stat_activity (every 0.1 s): "
                    + ", ".join(f"{what} {n / samples:.0%}" for what, n in counter.most_common(6))
                )
    return lines


def run_server(bindir: Path, sync: str, rates: list[int], args: argparse.Namespace, first: int) -> list[Step]:
    """A fresh server with this synchronous_commit, the worker, then each rate in turn."""
    server = LocalServer(bindir, settings=settings(sync)).start()
    worker: subprocess.Popen[bytes] | None = None
    steps: list[Step] = []
    with tempfile.TemporaryDirectory() as tmp:
        worker_log = Path(tmp) / "worker.log"
        try:
            install(server.dsn())
            with worker_log.open("wb") as log_file:
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "auditdb",
                        "--dsn",
                        server.dsn(),
                        "worker",
                        "--batch-size",
                        str(args.batch_size),
                        *args.worker_args.split(),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                deadline = time.time() + 30
                while not conn.execute(
                    "select exists (select from pg_stat_activity where application_name = %s)", (WORKER_APP,)
                ).fetchone()[0]:  # type: ignore[index]
                    if worker.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"the worker did not start:\n{worker_log.read_text()}")
                    time.sleep(0.1)
            for n, rate in enumerate(rates, first):
                print(f"synchronous_commit {sync}, offered {rate or 'max'}/s for {args.seconds:g} s …", flush=True)
                step = run_step(server, worker, worker_log, args, rate, n)
                step.sync = sync
                steps.append(step)
                print(
                    f"  emitted {step.emit_rate:,.0f}/s, logged {step.drain_rate:,.0f}/s, "
                    f"backlog {step.backlog_end:,}, "
                    f"p50 {ms(pct(step.committed, 50))} ms, p99 {ms(pct(step.committed, 99))} ms, "
                    f"lost {step.lost}, still queued {step.still_queued}, dup {step.logged - step.distinct}",
                    flush=True,
                )
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            server.stop()
        if worker is not None and worker.returncode != 0 and steps:
            steps[-1].worker_exit = worker.returncode
            print(f"the worker exited with {worker.returncode}:\n{worker_log.read_text()[-3000:]}", file=sys.stderr)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument(
        "--rate", default="2500,5000,0", help="offered events/s per step, comma-separated; 0: as fast as possible"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="emitting time per step")
    parser.add_argument("--emitters", type=int, default=4, help="emitter processes, one connection each")
    parser.add_argument("--api", choices=("emit", "sender"), default="emit", help="auditdb.emit or EventSender.emit")
    parser.add_argument("--synchronous-commit", default="on", help="on, off, or both (on,off): a fresh server for each")
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's --batch-size")
    parser.add_argument(
        "--worker-args", default="", help='more options for `auditdb worker`, e.g. "--no-listen --poll-interval 0.05"'
    )
    parser.add_argument("--poll", type=float, default=0.02, help="the observer's poll interval, seconds")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the queue to empty")
    args = parser.parse_args()
    rates = [int(r) for r in args.rate.split(",")]
    syncs = args.synchronous_commit.split(",")
    if not set(syncs) <= {"on", "off"}:
        parser.error("--synchronous-commit takes on, off or on,off")
    key, bindir = pick_server(args.server)
    version = server_version(bindir)[1]
    machine = describe_machine()
    load = os.getloadavg()
    code = describe_code()
    steps: list[Step] = []
    for sync in syncs:
        steps += run_server(bindir, sync, rates, args, len(steps) + 1)
    finish(report(steps, args, key, version, machine, load, code), args.output)


if __name__ == "__main__":
    main()

"""Seals and their proof: `auditdb seal` runs the sealer, `auditdb verify` recomputes the chain here.

verify never trusts the server's hash functions (a superuser can replace them): it reads each
entry's values as their types print them (COPY's text, no cast, which a superuser could define)
and hashes them in Python, in canonical form 1 (auditdb/canonical.py; sql/definitions/seal.sql
computes the same, and a test checks that both sides agree). A role that does not read every
entry cannot verify (exit 3). What it reports, with exit 1: a seal missing, altered or out of
the chain; the entries of a seal's range edited, deleted, added or reordered (a dropped or
detached partition shows as its entries missing); an entry dated before the bound an earlier
seal set (backdated) or after its own seal was made (future-dated); a prune entry that explains
nothing. Pruned months are read from their archives (auditdb/archive.py) when given.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from auditdb.archive import ArchivedMonth, archived_entries, pruned_months
from auditdb.canonical import (
    _HEADS,
    ENTRY_COLUMNS,
    ENTRY_PREFIX,
    SEAL_PREFIX,
    canonical,
    entry_digest,
    field_digest,
    time_key,
)
from auditdb.db import SAFE_SEARCH_PATH, pinned
from auditdb.errors import AuditDBError

__all__ = ["ENTRY_COLUMNS", "Finding", "Report", "canonical", "entry_digest", "seal", "seal_digest", "verify"]

_NULL = b"\\N"  # COPY's text format for null
# Types read as the server prints them.
PRINTED_TYPES = ("int2", "int8", "timestamptz", "inet", "json", "jsonb")
# The settings the printed texts depend on, as sql/definitions/seal.sql fixes them.
READ_SETTINGS = {"timezone": "UTC", "datestyle": "ISO, YMD", "search_path": SAFE_SEARCH_PATH, "client_encoding": "UTF8"}
# Seals read a page at a time; entries a window of consecutive seals at a time (one COPY, in a
# short transaction of its own), so neither memory nor any transaction grows with the log.
SEAL_PAGE = 2_000
WINDOW = 200_000


def seal_digest(row: dict[str, Any], prev_sha256: bytes | None) -> bytes:
    """SHA-256 of a seal (its fields as SEALS_SQL reads them), chained to prev_sha256."""
    texts = (
        row["seal_id"],
        row["sealed_at"],
        row["format"],
        row["prev_upto_id"],
        row["upto_id"],
        row["entry_count"],
        bytes(row["entries_sha256"]).hex(),
        row["floor_at"],
        None if prev_sha256 is None else prev_sha256.hex(),
    )
    return hashlib.sha256(canonical(texts, SEAL_PREFIX)).digest()


SEALS_SQL = """
select s.seal_id, s.sealed_at, s.format, s.prev_upto_id, s.upto_id, s.entry_count, s.entries_sha256,
       s.floor_at, s.prev_sha256, s.seal_sha256,
       %(since)s::timestamptz is null or s.sealed_at >= %(since)s as check_entries,
       s.sealed_at + interval '1 second' as ceiling_at
  from auditdb.seal s where s.seal_id > %(after)s order by s.seal_id limit %(page)s"""

# Each entry's values in COPY's text format: as the types print them, in bytes, no row objects.
ENTRIES_SQL = sql.SQL(
    "copy (select {} from auditdb.log l where l.id > %s and l.id <= %s order by l.id) to stdout"
).format(sql.SQL(", ").join(sql.Identifier("l", c) for c in ENTRY_COLUMNS))
_OCCURRED_AT = ENTRY_COLUMNS.index("occurred_at")


@dataclass(frozen=True)
class Finding:
    """One thing verify found wrong."""

    kind: str  # seal-missing, seal-altered, chain-broken, entries-altered, backdated, archive-altered
    message: str


@dataclass
class Report:
    seals: int = 0
    entries: int = 0
    unsealed: int = 0
    # seals made before --since: their hashes and the chain checked, not their entries
    skipped: int = 0
    # entries read from archives of pruned months
    archived: int = 0
    # what could not be checked (pruned months whose archive was not given), one line each
    unchecked: list[str] = field(default_factory=list)
    # the id ranges of the seals not checked, and how many entries they lack in all
    unchecked_ranges: list[tuple[int, int]] = field(default_factory=list)
    shortfall: int = 0
    findings: list[Finding] = field(default_factory=list)
    # seal id -> its hash as recomputed here, chained from the first seal
    chain: dict[int, bytes] = field(default_factory=dict)
    seals_last_id: int | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def seal(conn: psycopg.Connection[Any], max_entries: int = 100_000, *, rounds: int = 1000) -> int:
    """Seal what can be sealed now, a seal per transaction; returns the entries sealed.

    The first call after new entries only notes their range: it is sealed at a later call, once
    every transaction that could still add an entry in it has ended.
    """
    total = 0
    with pinned(conn):
        for _ in range(rounds):
            with conn.transaction():
                row = conn.execute("select auditdb.seal(%s)", (max_entries,)).fetchone()
            sealed = int(row[0]) if row else 0
            total += sealed
            if sealed < max_entries:
                break
    return total


@contextmanager
def _reading(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A short transaction reading values as their types print them, every row in view.

    A superuser, or an admin with BYPASSRLS, reads with row_security off (no policy can hide a row from it);
    an admin who reads every tenant reads under auditdb's policies, whose shape `doctor` checks;
    anyone else cannot verify (AuditDBError: exit 3), since it proves nothing about rows it cannot see.
    """
    with conn.transaction():
        for name, value in READ_SETTINGS.items():
            conn.execute("select pg_catalog.set_config(%s, %s, true)", (name, value))
        row = conn.execute(
            "select r.rolsuper or r.rolbypassrls, auditdb.reader_sees_all() from pg_catalog.pg_roles r"
            " where r.rolname = current_user"
        ).fetchone()
        if row and row[0]:
            conn.execute("select pg_catalog.set_config('row_security', 'off', true)")
        elif not (row and row[1]):
            raise AuditDBError(
                f"{conn.info.user} does not read every entry (a viewer, or an admin bound to tenants): "
                "this needs an admin of every tenant (`auditdb grant ROLE --admin`, no --tenant), a superuser, "
                "or an admin with BYPASSRLS"
            )
        yield conn


def _printed(cur: psycopg.Cursor[Any]) -> None:
    for name in PRINTED_TYPES:
        cur.adapters.register_loader(name, TextLoader)


_COPY_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\\": b"\\"}
_COPY_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)


def _unescape(value: bytes) -> bytes:
    """A field of COPY's text format as the value it stands for (COPY TO writes only these escapes)."""

    def one(m: re.Match[bytes]) -> bytes:
        try:
            return _COPY_ESCAPES[m.group(1)]
        except KeyError:
            raise AuditDBError(f"unexpected escape \\{m.group(1)!r} in the server's COPY output") from None

    return _COPY_ESCAPE.sub(one, value)


# An entry as verify handles it: id, digest, occurred_at as printed (UTF-8).
Entry = tuple[int, bytes, bytes]


def _live_entries(conn: psycopg.Connection[Any], after: int, upto: int) -> Iterator[Entry]:
    """The log's entries with after < id <= upto, in id order, from one COPY in a short transaction."""
    heads, null, sha = _HEADS, _NULL, hashlib.sha256
    width = len(ENTRY_COLUMNS)
    with _reading(conn), conn.cursor() as cur, cur.copy(ENTRIES_SQL, (after, upto)) as copy:
        for data in copy:
            line = bytes(data)
            fields = line[:-1].split(b"\t")
            if len(fields) != width:
                raise AuditDBError(f"the server sent {len(fields)} fields for an entry, not {width}")
            if line.count(b"\\") == fields.count(null):
                # no escapes: every backslash is a null's (the common case, done inline)
                out = [ENTRY_PREFIX]
                for v in fields:
                    if v == null:
                        out.append(b"N")
                    else:
                        n = len(v)
                        out.append(heads[n] if n < 4096 else b"S%d:" % n)
                        out.append(v)
                digest = sha(b"".join(out)).digest()
                yield int(fields[0]), digest, fields[_OCCURRED_AT]
            else:
                values = [None if v == null else _unescape(v) for v in fields]
                yield int(fields[0]), field_digest(values), values[_OCCURRED_AT] or b""


def _plain(printed: bytes) -> bool:
    """A time printed as 'YYYY-MM-DD hh:mm:ss[.f]+00' (a four-digit year of our era): its bytes order as it does."""
    return len(printed) >= 22 and printed[4] == 45 and printed[-3] == 43  # '-' and '+'


@dataclass
class _Seal:
    """A seal read for checking, with what the entries of its range add up to."""

    row: dict[str, Any]
    floor_before: str  # the highest bound the seals before it set ('-infinity' for none)
    count: int = 0
    running: Any = field(default_factory=hashlib.sha256)
    last_id: int | None = None
    backdated: list[str] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.row["seal_id"])

    @property
    def after(self) -> int:
        return int(self.row["prev_upto_id"])

    @property
    def upto(self) -> int:
        return int(self.row["upto_id"])


def _seal_pages(conn: psycopg.Connection[Any], since: str | None) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        with _reading(conn), conn.cursor(row_factory=dict_row) as cur:
            _printed(cur)
            page = cur.execute(SEALS_SQL, {"since": since, "after": after, "page": SEAL_PAGE}).fetchall()
        yield from page
        if len(page) < SEAL_PAGE:
            return
        after = int(page[-1]["seal_id"])


def _windows(seals: Iterator[_Seal]) -> Iterator[list[_Seal]]:
    """Runs of seals whose ranges follow one another, each covering about WINDOW entries at most."""
    window: list[_Seal] = []
    entries = 0
    for s in seals:
        if window and (s.after != window[-1].upto or entries + int(s.row["entry_count"]) > WINDOW):
            yield window
            window, entries = [], 0
        window.append(s)
        entries += int(s.row["entry_count"])
    if window:
        yield window


class _Archives:
    """The entries of pruned months, from their archives, in id order (verify reads them as it goes)."""

    def __init__(self, months: list[ArchivedMonth]) -> None:
        self.months = months
        self._stream = heapq.merge(*(archived_entries(m) for m in months), key=lambda e: e[0])
        self._next: Entry | None = next(self._stream, None)

    def upto(self, upto: int) -> list[Entry]:
        """The archived entries with ids up to upto not handed out before."""
        out = []
        while self._next is not None and self._next[0] <= upto:
            out.append(self._next)
            self._next = next(self._stream, None)
        return out


def _overlaps(s: _Seal, month: ArchivedMonth) -> bool:
    """Could the seal hold entries of the month? Its entries are dated from its floor to when it was made."""
    return time_key(s.floor_before) < time_key(month.end) and time_key(s.row["sealed_at"]) >= time_key(month.start)


def verify(
    conn: psycopg.Connection[Any],
    progress: Callable[[int], None] | None = None,
    *,
    since: str | None = None,
    archive_dir: Path | None = None,
) -> Report:
    """Recompute every seal and the entries it covers; what does not match is a finding.

    since: entries of seals made before it are not read (their seals and the chain are still
    checked). archive_dir: where the archives of months retention dropped are; their entries are
    read from there in place of the log. A seal that may hold entries of a pruned month whose
    archive is not there is reported as not checked.
    """
    report = Report()
    found = report.findings.append
    with _reading(conn):
        last = conn.execute("select coalesce(max(s.upto_id), 0) from auditdb.seal s").fetchone()
        pruned, problems = pruned_months(conn, archive_dir, int(last[0]) if last else 0)
    for wrong in problems:
        found(Finding("prune-invalid", wrong))
    archives = _Archives([m for m in pruned if m.path is not None])
    missing = [m for m in pruned if m.path is None]
    expected_id, prev_upto, prev_hash = 1, 0, None
    floor = "-infinity"

    def seals() -> Iterator[_Seal]:
        """Every seal, its own hash and its place in the chain checked; those whose entries need reading."""
        nonlocal expected_id, prev_upto, prev_hash, floor
        for row in _seal_pages(conn, since):
            report.seals += 1
            sid, after = int(row["seal_id"]), int(row["prev_upto_id"])
            if sid != expected_id:
                found(
                    Finding("seal-missing", f"seals {expected_id} to {sid - 1} are missing (removed from auditdb.seal)")
                )
            if after != prev_upto:
                found(
                    Finding(
                        "chain-broken",
                        f"seal {sid} starts after entry {after}, but the seal before it ended at {prev_upto}",
                    )
                )
            stored_prev = None if row["prev_sha256"] is None else bytes(row["prev_sha256"])
            if stored_prev != prev_hash:
                found(Finding("chain-broken", f"seal {sid} does not follow the seal before it (wrong previous hash)"))
            recomputed = seal_digest(row, stored_prev)
            if recomputed != bytes(row["seal_sha256"]):
                found(Finding("seal-altered", f"seal {sid} was altered: its fields do not hash to its recorded hash"))
            report.chain[sid] = seal_digest(row, prev_hash) if stored_prev != prev_hash else recomputed
            report.seals_last_id = sid
            s = _Seal(row, floor)
            expected_id, prev_upto, prev_hash = sid + 1, s.upto, report.chain[sid]
            if time_key(row["floor_at"]) > time_key(floor):
                floor = row["floor_at"]
            if row["check_entries"]:
                yield s
            else:
                report.skipped += 1  # (its archived entries are passed over by the next window read)

    for window in _windows(seals()):
        _check_window(conn, window, archives, report)
        for s in window:
            _finish(s, missing, report)
        if progress is not None:
            progress(report.entries)
    _check_prunes(pruned, missing, since, report)
    archives.upto(2**63)  # the rest of each archive (entries above the last seal), for its digest
    for m in archives.months:
        problem = m.problem()
        if problem:
            found(Finding("archive-altered", problem))
    _check_tail(conn, prev_upto, report)
    return report


def _check_window(conn: psycopg.Connection[Any], window: list[_Seal], archives: _Archives, report: Report) -> None:
    """Read the window's entries (the log's, and archived ones of pruned months) into its seals."""
    after, upto = window[0].after, window[-1].upto
    entries: Iterator[Entry] = _live_entries(conn, after, upto)
    archived = [e for e in archives.upto(upto) if e[0] > after]
    if archived:
        report.archived += len(archived)
        entries = heapq.merge(entries, archived, key=lambda e: e[0])
    k = 0
    s = window[0]
    floor, ceiling, plain = _bounds(s)
    for entry_id, digest, ts in entries:
        if entry_id > s.upto:
            while entry_id > window[k].upto:
                k += 1
            s = window[k]
            floor, ceiling, plain = _bounds(s)
        s.count += 1
        s.running.update(digest)
        if s.last_id is not None and entry_id <= s.last_id and len(s.repeated) < 10:
            s.repeated.append(str(entry_id))
        s.last_id = entry_id
        # Dated from the bound an earlier seal set to when its own seal was made (plain times
        # order as their bytes do; any other takes the slow path).
        if plain and len(ts) >= 22 and ts[4] == 45 and ts[-3] == 43 and floor <= ts <= ceiling:
            continue
        key = time_key(ts)
        if floor and key < time_key(floor) and len(s.backdated) < 10:
            s.backdated.append(str(entry_id))
        if key > time_key(ceiling) and len(s.future) < 10:
            s.future.append(str(entry_id))


def _bounds(s: _Seal) -> tuple[bytes, bytes, bool]:
    """The seal's bounds on its entries' times, printed: floor (b"" for none) and ceiling; both plain?"""
    floor = b"" if s.floor_before == "-infinity" else s.floor_before.encode()
    ceiling = str(s.row["ceiling_at"]).encode()
    return floor, ceiling, (not floor or _plain(floor)) and _plain(ceiling)


def _finish(s: _Seal, missing: list[ArchivedMonth], report: Report) -> None:
    found = report.findings.append
    sid, after, upto = s.id, s.after, s.upto
    if s.repeated:
        found(Finding("entries-altered", f"entry ids {', '.join(s.repeated)} (seal {sid}) appear more than once"))
    if s.backdated:
        found(
            Finding(
                "backdated",
                f"entries {', '.join(s.backdated)} (seal {sid}) are dated before the bound an earlier seal set: "
                "written later than their time says",
            )
        )
    if s.future:
        found(
            Finding(
                "future-dated",
                f"entries {', '.join(s.future)} (seal {sid}) are dated after their seal was made: "
                "written with a time that had not come",
            )
        )
    if s.count == int(s.row["entry_count"]) and s.running.digest() == bytes(s.row["entries_sha256"]):
        report.entries += s.count
        return
    months = [m.name for m in missing if _overlaps(s, m)]
    if months and s.count < int(s.row["entry_count"]):
        report.unchecked.append(
            f"seal {sid} (entries {after + 1} to {upto}) holds entries of {', '.join(months)}, pruned: "
            "give its archive (--archive-dir) to check them"
        )
        report.unchecked_ranges.append((after, upto))
        report.shortfall += int(s.row["entry_count"]) - s.count
        return
    report.entries += s.count
    what = (
        f"{s.row['entry_count']} sealed, {s.count} there now"
        if s.count != int(s.row["entry_count"])
        else "the same number, different content or order"
    )
    found(Finding("entries-altered", f"entries {after + 1} to {upto} (seal {sid}) were changed since sealed: {what}"))


def _check_prunes(pruned: list[ArchivedMonth], missing: list[ArchivedMonth], since: str | None, report: Report) -> None:
    """The seals left unchecked must be explained by the prunes: lacking what they dropped, no more.

    A prune entry in a seal that could not be checked proves nothing (it could have been written
    there after the fact); and the entries the unchecked seals lack must be exactly those the
    prunes without archives dropped (entries of months pruned before sealing began were never
    sealed, and do not count).
    """
    found = report.findings.append
    for month in pruned:
        if any(after < month.entry_id <= upto for after, upto in report.unchecked_ranges):
            found(
                Finding(
                    "prune-invalid",
                    f"the prune entry of {month.name} ({month.entry_id}) is in a seal that could not be checked",
                )
            )
    if since is None and report.unchecked:
        dropped = sum(m.rows for m in missing if m.sealed)
        if report.shortfall != dropped:
            found(
                Finding(
                    "entries-altered",
                    f"the seals holding entries of pruned months lack {report.shortfall} entries; "
                    f"the prunes without archives dropped {dropped}",
                )
            )


def _check_tail(conn: psycopg.Connection[Any], prev_upto: int, report: Report) -> None:
    """Entries above the last seal: not sealed yet, but none may be dated before its bound."""
    found = report.findings.append
    with _reading(conn):
        tail = conn.execute(
            """select count(*) filter (where l.id > %s),
                      count(*) filter (where l.id > %s
                                         and l.occurred_at < (select max(f.floor_at) from auditdb.seal f)),
                      count(*) filter (where l.id is null or l.id <= 0)
                 from auditdb.log l where l.id > %s or l.id is null or l.id <= 0""",
            (prev_upto, prev_upto, prev_upto),
        ).fetchone()
    if tail:
        report.unsealed = int(tail[0])
        if tail[1]:
            found(
                Finding(
                    "backdated",
                    f"{tail[1]} entries not yet sealed are dated before the bound the last seal set: "
                    "written later than their time says",
                )
            )
        if tail[2]:
            found(Finding("entries-altered", f"{tail[2]} entries have no id or one below 1: no seal can cover them"))

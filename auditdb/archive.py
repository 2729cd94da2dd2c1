"""Archives of monthly partitions: their line format, their digest, and their entries for `verify`.

An archive (`partitions prune --export-dir`) is DIR/<partition>.jsonl.gz: one JSON object per
entry, in id order, every column of the log as to_jsonb prints it except occurred_at, which is
the time as timestamptz prints it in UTC ('2026-01-31 23:59:59.5+00'). So each line reads back
into the log with jsonb_populate_record, and holds every value as sealing hashed it: verify
recomputes a pruned month's entries from its archive (canonical form 1, sql/definitions/seal.sql).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from auditdb.canonical import ENTRY_COLUMNS, field_digest, time_key
from auditdb.errors import AuditDBError

__all__ = ["ArchiveDigest", "ArchivedMonth", "archived_entries", "pruned_months"]

# One archive line, over the log aliased l, evaluated with TimeZone UTC and DateStyle ISO
# (sql/definitions/partitions.sql's auditdb.archive_digest builds the same line). For a query
# with parameters: its % is doubled.
LINE_SQL = "(to_jsonb(l) || jsonb_build_object('occurred_at', pg_catalog.format('%%s', l.occurred_at)))::text"


class ArchiveDigest:
    """The digest auditdb.archive_digest computes: SHA-256 of each run of 10,000 lines, then of those digests.

    The server recomputes it from the partition, so an archive is recorded only by someone who
    had every byte of it.
    """

    RUN = 10_000

    def __init__(self) -> None:
        self._runs = hashlib.sha256()
        self._run = hashlib.sha256()
        self._lines = 0

    def add(self, line: bytes) -> None:
        self._run.update(line)
        self._lines += 1
        if self._lines == self.RUN:
            self._runs.update(self._run.digest())
            self._run = hashlib.sha256()
            self._lines = 0

    def hexdigest(self) -> str:
        total = self._runs.copy()
        if self._lines:
            total.update(self._run.digest())
        return total.hexdigest()


@dataclass
class ArchivedMonth:
    """A month retention dropped, as its prune entry in the log records it; path: its archive, when given."""

    name: str
    start: str  # printed as timestamptz prints in UTC
    end: str
    rows: int
    sha256: str | None
    path: Path | None = None
    # the prune entry's id, and whether the month's entries were sealed before it was pruned
    entry_id: int = 0
    sealed: bool = True
    # what reading the archive found (set once it has been read to the end)
    read_rows: int | None = None
    read_sha256: str | None = None

    def problem(self) -> str | None:
        """Why the archive read is not the one recorded when the month was pruned, if it is not."""
        if self.path is None or self.read_sha256 is None:
            return None
        if self.read_rows != self.rows or self.read_sha256 != self.sha256:
            return (
                f"archive {self.path} is not the one recorded when {self.name} was pruned "
                f"({self.read_rows} entries, digest {self.read_sha256[:16]}…; recorded {self.rows}, "
                f"{(self.sha256 or 'none')[:16]}…)"
            )
        return None


def _month_bounds(name: str) -> tuple[str, str] | None:
    """The month's first instant and the next month's, as timestamptz prints them in UTC; None for no month."""
    year, month = int(name[4:8]), int(name[9:11])
    if not 1 <= month <= 12 or year < 1:
        return None
    after = (year + month // 12, month % 12 + 1)
    return f"{year:04d}-{month:02d}-01 00:00:00+00", f"{after[0]:04d}-{after[1]:02d}-01 00:00:00+00"


def pruned_months(
    conn: psycopg.Connection[Any], archive_dir: Path | None, sealed_upto: int
) -> tuple[list[ArchivedMonth], list[str]]:
    """The months `partitions prune` dropped, with their archives in archive_dir; and what is wrong with the record.

    Only prune entries already sealed count (ids up to sealed_upto): one a superuser adds now
    changes nothing. An entry naming no month, a month with entries still in the log, or one
    that had not ended when the entry was written, is a problem, not a pruned month (verify also
    finds an entry dated after its seal was made). With archive_dir, a month
    archived when pruned whose archive is not there is an AuditDBError (verify could not check).
    conn reads every entry (verify's reading transaction).
    """
    first = conn.execute("select s.upto_id from auditdb.seal s where s.seal_id = 1").fetchone()
    rows = conn.execute(
        """select l.id, l.entity_id, l.metadata->>'rows', l.metadata->>'sha256', pg_catalog.format('%%s', l.occurred_at)
             from auditdb.log l
            where l.action = 'AUDIT_CHANGED' and l.entity_type = 'AuditPartition'
              and l.metadata->>'operation' = 'prune' and l.id <= %s
            order by l.id""",
        (sealed_upto,),
    ).fetchall()
    months: dict[str, ArchivedMonth] = {}
    problems: list[str] = []
    for entry_id, name, count, digest, at in rows:
        bounds = _month_bounds(name) if re.fullmatch(r"log_[0-9]{4}_[0-9]{2}", str(name or "")) else None
        if bounds is None or not str(count or "").isdigit():
            problems.append(f"prune entry {entry_id} names {str(name)[:40]!r}, which is no month auditdb keeps")
            continue
        # Gone means no entry of the month is in the log, whatever its partition is called now.
        still = conn.execute(
            "select exists (select from auditdb.log l where l.occurred_at >= %s and l.occurred_at < %s)", bounds
        ).fetchone()
        if still and still[0]:
            problems.append(f"prune entry {entry_id} says {name} was dropped, but entries of that month are there")
            continue
        if time_key(bounds[1]) > time_key(str(at)):
            problems.append(f"prune entry {entry_id} says {name} was dropped on {at}, before the month ended")
            continue
        path = None
        if archive_dir is not None and digest:
            path = archive_dir / f"{name}.jsonl.gz"
            if not path.is_file():
                raise AuditDBError(f"{name} was archived when pruned, but {path} is not there")
        months[name] = ArchivedMonth(
            name, bounds[0], bounds[1], int(count), digest, path, entry_id, first is not None and entry_id > first[0]
        )
    return list(months.values()), problems


class _Number(str):
    """A JSON number exactly as written (jsonb prints numbers as numeric does: keep every digit)."""


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x22: '\\"',
    0x5C: "\\\\",
}


def jsonb_text(value: Any) -> str:
    """What jsonb prints for a value json.loads read (numbers as _Number): `{"a": 1, "b": [true, null]}`."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return '"' + value.translate(_JSON_ESCAPES) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{jsonb_text(k)}: {jsonb_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _printed(column: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if column in ("changes", "metadata"):
        return jsonb_text(value).encode()
    if isinstance(value, _Number | str):
        return str.__str__(value).encode()
    raise AuditDBError(f"column {column} holds {jsonb_text(value)[:40]} in the archive, not a text or a number")


# In a line jsonb printed, a string (escapes included) or a bracket; anything else is between them.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _flat_values(line: str) -> list[bytes | None]:
    """ENTRY_COLUMNS' values from an archive line, without parsing what is nested (however deep).

    The line is jsonb's text (`{"key": value, "key": value}`): a member's value is the text from
    after its key's `": "` to the `, ` before the next key at the same depth (or the closing
    brace), and a nested value's text is what jsonb prints for it alone.
    """
    keys: list[tuple[str, int, int]] = []  # key, where it starts, where its value starts
    depth = 0
    for m in _TOKEN.finditer(line):
        token = m.group(0)
        if token[0] == '"':
            if depth == 1 and line.startswith(": ", m.end()):
                keys.append((json.loads(token), m.start(), m.end() + 2))
        elif token in "{[":
            depth += 1
        else:
            depth -= 1
    end = line.rstrip().rfind("}")
    raw: dict[str, str] = {}
    for i, (key, _, start) in enumerate(keys):
        stop = keys[i + 1][1] - 2 if i + 1 < len(keys) else end
        raw[key] = line[start:stop]
    values: list[bytes | None] = []
    for column in ENTRY_COLUMNS:
        text = raw.get(column, "null")
        if text == "null":
            values.append(None)
        elif column in ("changes", "metadata") or not text.startswith('"'):
            values.append(text.encode())  # nested values, and numbers, as printed
        else:
            values.append(str(json.loads(text)).encode())
    return values


def archived_entries(month: ArchivedMonth) -> Iterator[tuple[int, bytes, bytes]]:
    """The archive's entries as verify reads the log's: (id, digest, occurred_at as printed), in id order.

    Reading it to the end sets month.read_rows and month.read_sha256.
    """
    assert month.path is not None
    digest = ArchiveDigest()
    count = 0
    last = 0
    try:
        with gzip.open(month.path, "rb") as f:
            for line in f:
                digest.add(line)
                count += 1
                try:
                    entry = json.loads(line, parse_int=_Number, parse_float=_Number)
                    if not isinstance(entry, dict):
                        raise AuditDBError(f"{month.path}: line {count} is not an entry (a JSON object)")
                    values = [_printed(c, entry.get(c)) for c in ENTRY_COLUMNS]
                except RecursionError:  # nested deeper than Python's parser goes
                    values = _flat_values(line.decode("utf-8"))
                entry_id = int(values[0] or b"0")
                if entry_id <= last:
                    raise AuditDBError(f"{month.path}: line {count} is not in id order")
                last = entry_id
                yield entry_id, field_digest(values), values[1] or b""
    except (OSError, EOFError, ValueError) as e:
        raise AuditDBError(f"cannot read the archive {month.path}: {e}") from e
    month.read_rows, month.read_sha256 = count, digest.hexdigest()

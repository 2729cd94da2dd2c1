"""`auditdb export` and `log --format csv/json`: streamed with COPY, constant memory, spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from auditdb.checkpoint import load_private_key
from auditdb.db import SAFE_SEARCH_PATH, pinned
from auditdb.errors import AuditDBError
from auditdb.manifest import write_manifest
from auditdb.output import Target, is_stdout
from auditdb.query import COLUMNS, Filters, JsonText, where_clause

__all__ = ["CSV_HEADER", "csv_lines", "entries_json", "export", "neutralise"]

CSV_HEADER = [
    "Timestamp",
    "Action",
    "Entity Type",
    "Entity ID",
    "Entity Name",
    "User",
    "Email",
    "Project",
    "IP Address",
    "User Agent",
    "Metadata",
]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PROGRESS_EVERY = 100_000


def neutralise(cell: str) -> str:
    """Prefix a cell a spreadsheet would run as a formula (also after leading spaces) with '."""
    return "'" + cell if cell.lstrip(" ").startswith(_FORMULA_START) else cell


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Outside its strings JSON text is ASCII; inside, \uXXXX stands for any character.
_NOT_ASCII = re.compile(r"[^\x00-\x7e]+")


def _ascii_json(value: Any) -> str:
    if isinstance(value, JsonText):
        return _NOT_ASCII.sub(lambda m: json.dumps(m.group(0))[1:-1], value.text)
    if isinstance(value, datetime):
        return json.dumps(_utc(value))
    return json.dumps(value if value is None or isinstance(value, int | str) else str(value))


def entries_json(entries: list[dict[str, Any]]) -> Iterator[str]:
    """`log --format json`: one array of objects keyed by the log's columns, in pieces.

    ASCII only (every other character as \\uXXXX, so nothing reaches a terminal raw); times in
    UTC ISO-8601, the IP as text; changes and metadata exactly as the server printed them, so a
    number shows every stored digit (10.00, not 10.0).
    """
    if not entries:
        yield "[]"
        return
    for n, entry in enumerate(entries):
        members = ",\n".join(f"  {json.dumps(c)}: {_ascii_json(entry[c])}" for c in COLUMNS)
        yield ("[\n {\n" if n == 0 else ",\n {\n") + members + "\n }"
    yield "\n]"


_TIME = sql.SQL("""to_char(l.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""")
_ORDER = sql.SQL("order by l.occurred_at desc, l.id desc")

# What neutralise() looks at first (space, tab, CR, +, -, =, @: all below "A"): two cheap ascii()
# tests let almost every cell skip the regular expression.
_FORMULA_FIRST = sorted(ord(c) for c in {" ", *_FORMULA_START})
assert _FORMULA_FIRST[-1] < ord("A")


def _col(name: str) -> sql.Composable:
    return sql.Identifier("l", name)


def _sql_cell(expr: sql.Composable) -> sql.Composable:
    """The SQL twin of neutralise(), NULL as '': the server computes it, so COPY streams finished CSV."""
    return sql.SQL(
        "case when ascii({e}) < {below} and ascii({e}) in ({first}) and {e} ~ '^ *[-=+@\t\r]' "
        "then '''' || {e} else coalesce({e}, '') end"
    ).format(e=expr, below=sql.Literal(ord("A")), first=sql.SQL(", ").join(sql.Literal(c) for c in _FORMULA_FIRST))


# The Metadata cell: metadata with `changes` added, as jsonb prints it. jsonb_set makes the same
# object as `metadata || jsonb_build_object('changes', changes)` (the same bytes) with one pass less
# over the changes, about a third less work. An object prints as `{…}`, which no spreadsheet runs;
# metadata is always one (CHECK constraint), and anything else would take the plain, neutralised
# path.
_MERGED = sql.SQL(
    "(case when l.changes is null then l.metadata else l.metadata || jsonb_build_object('changes', l.changes) end)"
)
_METADATA = sql.SQL(
    "case when jsonb_typeof(l.metadata) <> 'object' then {plain} "
    "when l.changes is null then l.metadata::text "
    "else jsonb_set(l.metadata, '{{changes}}', l.changes)::text end"
).format(plain=_sql_cell(sql.SQL("{}::text").format(_MERGED)))

# CSV_HEADER's columns, each computed once (the plain spelling, `case when e ~ … then '''' || e
# else e end` around every cell, computed each twice). The time (digits first, or NULL for
# ±infinity: an empty cell) and the address (host(): a hex digit or `:` first) cannot start a
# formula, so they skip the test. tests/test_export.py checks the output against the plain spelling.
_CSV_CELLS: tuple[sql.Composable, ...] = (
    _TIME,
    _sql_cell(_col("action")),
    _sql_cell(_col("entity_type")),
    _sql_cell(_col("entity_id")),
    _sql_cell(_col("entity_name")),
    _sql_cell(sql.SQL("coalesce({}, {})").format(_col("actor_name"), _col("actor_id"))),
    _sql_cell(_col("actor_email")),
    _sql_cell(_col("project_id")),
    sql.SQL("coalesce(host({}), '')").format(_col("ip")),
    _sql_cell(_col("user_agent")),
    _METADATA,
)

# JSONL: each line is what `json_build_object(<every column>)::text` prints, {"id" : 1,
# "occurred_at" : "…", …}, but json_build_object (like to_json) looks each argument's type up again
# on every row, which made it the slowest part of an export. json_object(keys, values) escapes the
# text columns exactly as json_build_object does (same `"key" : value`, `, ` and `null`) without
# those lookups; its braces come off as bytes (btrim on the text's bytes, in the database's own
# encoding: no conversion). The server sends each line in three pieces (id; the text columns;
# changes, metadata and txid), COPY'd in CSV mode with a quote (\x01) and a delimiter (\x02) that
# JSON text never contains raw (every control character is escaped), so no piece is ever quoted,
# and the client removes the delimiters.
_JSON_NOT_STRINGS = ("id", "changes", "metadata", "txid")
_JSON_STRINGS = tuple(c for c in COLUMNS if c not in _JSON_NOT_STRINGS)
assert COLUMNS == ("id", *_JSON_STRINGS, "changes", "metadata", "txid"), "update _jsonl_fields() for COLUMNS"
_JSON_STRING_VALUES = sql.SQL(", ").join(
    _TIME if c == "occurred_at" else sql.SQL("host({})").format(_col(c)) if c == "ip" else _col(c)
    for c in _JSON_STRINGS
)


def _jsonl_fields(encoding: sql.Composable) -> list[sql.Composable]:
    head = sql.SQL("""'{"id" : ' || l.id || ', '""")
    strings = sql.SQL(
        "convert_from(btrim(convert_to(json_object(array[{keys}]::text[], array[{values}])::text, {enc}), "
        "'{{}}'::bytea), {enc})"
    ).format(keys=sql.SQL(", ").join(sql.Literal(k) for k in _JSON_STRINGS), values=_JSON_STRING_VALUES, enc=encoding)
    tail = sql.SQL(
        """', "changes" : ' || coalesce(l.changes::text, 'null') """
        """|| ', "metadata" : ' || coalesce(l.metadata::text, 'null') || ', "txid" : ' || l.txid || '}'"""
    )
    return [head, strings, tail]


_COPY_OPTIONS = {
    "csv": "(format csv)",
    "jsonl": "(format csv, quote e'\\x01', delimiter e'\\x02')",
}
_CHUNK = 1 << 16  # bytes of whole rows handed on at a time


def _select(conn: psycopg.Connection[Any], fmt: str, where: sql.Composable) -> sql.Composable:
    fields: list[sql.Composable]
    if fmt == "csv":
        fields = list(_CSV_CELLS)
    else:
        fields = _jsonl_fields(sql.Literal(conn.info.parameter_status("server_encoding") or "UTF8"))
    return sql.SQL("select {} from auditdb.log l where {} {}").format(sql.SQL(", ").join(fields), where, _ORDER)


def _join_jsonl(chunk: bytearray) -> bytearray:
    return chunk.replace(b"\x02", b"")


def csv_lines(
    conn: psycopg.Connection[Any], filters: Filters, *, limit: int, before_id: int | None = None
) -> list[str]:
    """The CSV rows export writes for matching entries (newest first, at most limit), one string each."""
    where, params = where_clause(filters, before_id)
    query = sql.SQL("copy ({} limit %s) to stdout (format csv)").format(_select(conn, "csv", where))
    with pinned(conn), conn.cursor() as cur, cur.copy(query, [*params, limit]) as copy:
        return [bytes(row).decode(conn.info.encoding) for row in copy]


def _keep(chunk: bytearray) -> bytearray:
    return chunk


def export(
    conn: psycopg.Connection[Any],
    filters: Filters,
    output: str,
    *,
    fmt: str = "csv",
    actor: str | None = None,
    progress: Callable[[int], None] | None = None,
    manifest: str | None = None,
    key: Path | None = None,
) -> int:
    """Stream matching entries to output (a path, or - for stdout); log DATA_EXPORTED; return the row count.

    A manifest (auditdb/manifest.py) goes to `manifest`, else beside a regular file
    (OUTPUT.manifest.json), signed with the Ed25519 private key at `key` when given; stdout and
    devices get one only when `manifest` names where.

    COPY streams from the server, so memory stays flat however many rows: the server builds the
    finished cells (CSV) or the pieces of each line (JSONL), and Python only moves bytes, a
    chunk of whole rows at a time. Where the bytes go is Target's business: a regular file is
    written under a temporary name and renamed only when complete (a failed export leaves nothing
    under the target name); a device, a FIFO or stdout is written in place. An export that fails
    part-way is recorded with the rows sent; an OSError names `output`.
    """
    where, params = where_clause(filters)
    copy_sql = sql.SQL("copy ({}) to stdout {}").format(_select(conn, fmt, where), sql.SQL(_COPY_OPTIONS[fmt]))
    finish = _keep if fmt == "csv" else _join_jsonl
    if key is not None:
        load_private_key(key)  # a key that cannot sign is refused before anything is written
    out = Target(output)  # before the transaction: a FIFO waits here for its reader
    manifest_path = manifest or (output + ".manifest.json" if out.replaces_file else None)
    written = hashlib.sha256()
    size = 0

    def write(data: bytes | bytearray) -> None:
        nonlocal size
        written.update(data)
        size += len(data)
        out.write(data)

    rows = 0
    held: dict[str, Any] = {}
    failure: BaseException | None = None
    try:
        # One snapshot for what is streamed and for the server's count of it (auditdb.log_export).
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read")
            conn.execute("select pg_catalog.set_config('search_path', %s, true)", (SAFE_SEARCH_PATH,))
            try:
                with conn.transaction():  # a savepoint: a failed stream still leaves its record
                    if fmt == "csv":
                        buf = io.StringIO()
                        csv.writer(buf, lineterminator="\n").writerow(CSV_HEADER)
                        write(buf.getvalue().encode())
                    with conn.cursor() as cur, cur.copy(copy_sql, params) as copy:
                        chunk = bytearray()
                        reported = 0
                        # The server sends each row as one COPY message.
                        for count, row in enumerate(copy, 1):
                            chunk += row
                            if len(chunk) >= _CHUNK:
                                write(finish(chunk))
                                rows = count
                                chunk.clear()
                                if progress and count - reported >= _PROGRESS_EVERY:
                                    reported = count
                                    progress(count)
                        write(finish(chunk))
                        rows = cur.rowcount
                    out.finish()
                    if manifest_path is not None:
                        held = _held(conn, where, params)
            except (OSError, psycopg.Error, KeyboardInterrupt) as e:
                failure = e
            email = actor if actor and "@" in actor else None
            complete = failure is None
            if conn.closed or conn.broken:
                # The record is the streaming session's own (its snapshot, its row-level security):
                # no other connection can write it.
                raise AuditDBError(
                    f"the connection to the database was lost while exporting to {output} "
                    f"({rows} rows written): this export could not be recorded"
                ) from failure
            conn.execute(
                "select auditdb.log_export(%s, %s, %s, %s, %s, %s)",
                (json.dumps(filters.describe()), fmt, actor, email, complete, None if complete else rows),
            )
        if failure is not None:
            raise failure
        out.place()
    finally:
        out.discard()
    if manifest_path is not None:
        write_manifest(
            manifest_path,
            {
                "file": "-" if is_stdout(output) else os.path.basename(output),
                "export_format": fmt,
                "filters": filters.describe(),
                "rows": rows,
                "bytes": size,
                "sha256": written.hexdigest(),
                "database": conn.info.dbname,
                "encoding": conn.info.encoding,
                "exported_by": actor or conn.info.user,
                **held,
            },
            key,
        )
    return rows


def _held(conn: psycopg.Connection[Any], where: sql.Composable, params: list[Any]) -> dict[str, Any]:
    """Which entries the export holds and the newest seal, in the export's snapshot (for its manifest)."""
    seals = conn.execute("select has_table_privilege('auditdb.seal', 'select')").fetchone()
    if not (seals and seals[0]):
        query = sql.SQL(
            "select count(*), min(l.id), max(l.id), null, null, null, null from auditdb.log l where {}"
        ).format(where)
    else:
        query = sql.SQL(
            "with s as (select seal_id, upto_id, seal_sha256 from auditdb.seal order by seal_id desc limit 1) "
            "select count(*), min(l.id), max(l.id), (select seal_id from s), (select upto_id from s), "
            "(select encode(seal_sha256, 'hex') from s), count(*) filter (where l.id <= (select upto_id from s)) "
            "from auditdb.log l where {}"
        ).format(where)
    row = conn.execute(query, params).fetchone()
    count, low, high, seal_id, upto, digest, covered = row if row else (0, None, None, None, None, None, None)
    held: dict[str, Any] = {"ids": {"lowest": low, "highest": high}}
    if seal_id is not None:
        held["sealed"] = {
            "seal_id": seal_id,
            "upto_id": upto,
            "seal_sha256": digest,
            "entries_sealed": covered,
            "entries_not_sealed": int(count or 0) - int(covered or 0),
        }
    else:
        held["sealed"] = None  # no seal yet, or a reader who may not see them
    return held

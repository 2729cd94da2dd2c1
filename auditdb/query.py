"""Reading the log: filters for `log` and `export`, newest first, keyset paging, and one entry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from auditdb.db import pinned
from auditdb.errors import AuditDBError

__all__ = [
    "COLUMNS",
    "Filters",
    "JsonText",
    "fetch",
    "get_entry",
    "members",
    "parse_time",
    "split_changes",
    "where_clause",
]

COLUMNS = (
    "id",
    "occurred_at",
    "action",
    "entity_type",
    "entity_id",
    "entity_name",
    "project_id",
    "tenant_id",
    "actor_id",
    "actor_email",
    "actor_name",
    "ip",
    "user_agent",
    "db_user",
    "table_name",
    "changes",
    "metadata",
    "txid",
)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_YEAR = re.compile(r"^[+-]?(\d+)-")
_RANGE = "a time must fall in the years 1 to 9999 (UTC)"


def _shown(text: str) -> str:
    """The value as an error message quotes it: escaped, and short."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """`7d`, `12h`, `30m` (ago), an ISO date (midnight UTC) or an ISO date-time (UTC unless it says).

    A time Python cannot hold (`999999d` ago, year 0 or 10000, an offset pushing year 1 before
    it) is refused with one line, never an OverflowError.
    """
    value = text.strip()
    match = _RELATIVE.match(value)
    year = _YEAR.match(value)
    if (match and len(match.group(1)) > 9) or (year and not 1 <= int(year.group(1)[:6]) <= 9999):
        raise AuditDBError(f"{_shown(text)} is out of range: {_RANGE}")
    try:
        if match:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        parsed.astimezone(UTC)  # in range in UTC too (0001-01-01T00:00+01:00 is not)
    except OverflowError:
        raise AuditDBError(f"{_shown(text)} is out of range: {_RANGE}") from None
    except ValueError:
        raise AuditDBError(
            f"{_shown(text)} is not a time: use an ISO date (2026-11-01), date-time (2026-11-01T08:00) or 30m/12h/7d/2w"
        ) from None
    return parsed


@dataclass(frozen=True)
class Filters:
    """What `log` and `export` select; empty fields select everything."""

    since: datetime | None = None
    until: datetime | None = None
    actions: tuple[str, ...] = ()
    entity_types: tuple[str, ...] = ()
    entity_id: str | None = None
    user: str | None = None
    project: str | None = None
    tenant: str | None = None
    search: str | None = None
    extra: tuple[str, ...] = field(default=(), repr=False)

    def describe(self) -> dict[str, Any]:
        """The filters as JSON-ready values, for DATA_EXPORTED's metadata."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "extra" or value in (None, (), []):
                continue
            out[key] = (
                value.isoformat() if isinstance(value, datetime) else list(value) if isinstance(value, tuple) else value
            )
        return out


# The actions table changes write; the action index leaves them out (revision 0006).
CAPTURE_ACTIONS = ("CREATE", "UPDATE", "DELETE", "BULK_CREATE", "BULK_UPDATE", "BULK_DELETE")


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def where_clause(filters: Filters, before_id: int | None = None) -> tuple[sql.Composable, list[Any]]:
    """The WHERE clause (composed, values as parameters) for the filters."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    if filters.since is not None:
        parts.append(sql.SQL("l.occurred_at >= %s"))
        params.append(filters.since)
    if filters.until is not None:
        parts.append(sql.SQL("l.occurred_at < %s"))
        params.append(filters.until)
    if filters.actions:
        parts.append(sql.SQL("l.action = any(%s)"))
        params.append(list(filters.actions))
        if not set(filters.actions) & set(CAPTURE_ACTIONS):
            # The partial action index's predicate, spelled out: a generic plan (a connection
            # that prepared this query) cannot prove it from the parameter alone.
            parts.append(sql.SQL("l.action not in ({})").format(sql.SQL(", ").join(map(sql.Literal, CAPTURE_ACTIONS))))
    if filters.entity_types:
        parts.append(sql.SQL("l.entity_type = any(%s)"))
        params.append(list(filters.entity_types))
    if filters.entity_id is not None:
        parts.append(sql.SQL("l.entity_id = %s"))
        params.append(filters.entity_id)
    if filters.user is not None:
        parts.append(sql.SQL("(l.actor_id = %s or lower(l.actor_email) = lower(%s) or l.actor_name = %s)"))
        params += [filters.user] * 3
    if filters.project is not None:
        parts.append(sql.SQL("l.project_id = %s"))
        params.append(filters.project)
    if filters.tenant is not None:
        parts.append(sql.SQL("l.tenant_id = %s"))
        params.append(filters.tenant)
    if filters.search:
        parts.append(sql.SQL("(l.entity_name ilike %s or l.entity_id ilike %s or l.actor_email ilike %s)"))
        params += [_like(filters.search)] * 3
    if before_id is not None:
        parts.append(sql.SQL("(l.occurred_at, l.id) < (select b.occurred_at, b.id from auditdb.log b where b.id = %s)"))
        params.append(before_id)
    if not parts:
        return sql.SQL("true"), params
    return sql.SQL(" and ").join(parts), params


@dataclass(frozen=True, slots=True)
class JsonText:
    """A json/jsonb value's text exactly as the server printed it.

    Never parsed through a float: `10.00` stays `10.00`, `12345678901234567.1234567891` keeps
    every digit, a numeric of 5,000 digits stays whole (Python refuses to turn it into an int).
    """

    text: str

    def __str__(self) -> str:
        return self.text


class _JsonTextLoader(Loader):
    """Loads json and jsonb as JsonText: what the server sent, undecoded."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._encoding = self.connection.info.encoding if self.connection else "utf-8"

    def load(self, data: Buffer) -> JsonText:
        return JsonText(bytes(data).decode(self._encoding, "replace"))


# A JSON string (escapes included) or one of the characters that give a value its structure.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]')


def members(value: JsonText) -> dict[str, JsonText] | None:
    """An object's members, each value as its own text (never parsed); None for any other value.

    A scan, not a parse: nesting as deep as jsonb allows costs no recursion, and the values
    keep the server's spelling.
    """
    text = value.text.strip()
    if not text.startswith("{"):
        return None
    out: dict[str, JsonText] = {}
    depth = 0
    key: str | None = None
    start = 0
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token in ("{", "["):
            depth += 1
        elif token in ("}", "]"):
            depth -= 1
            if depth == 0:
                if key is not None:
                    out[key] = JsonText(text[start : m.start()].strip())
                break
        elif depth == 1:
            if token == ":":
                start = m.end()
            elif token == "," and key is not None:
                out[key] = JsonText(text[start : m.start()].strip())
                key = None
            elif key is None and token.startswith('"'):
                key = json.loads(token)
    return out


Change = dict[str, JsonText] | JsonText


# A whole row (CREATE, DELETE) since release 0008: {"": "new" or "old", column: value, …}. The key
# "" cannot be a column's name; entries written before hold {column: {"new": value}, …}.
WHOLE_ROW = ""


def split_changes(changes: JsonText | None) -> dict[str, Change]:
    """An entry's changes as {column: {"old": text, "new": text}}, each side only where present.

    Reads both shapes of a whole row (see WHOLE_ROW). A column whose change is not an object (no
    capture writes one) keeps its text as it is.
    """
    split: dict[str, Change] = {}
    top = members(changes) if changes is not None else None
    side = top.pop(WHOLE_ROW, None) if top else None
    if side is not None and side.text in ('"new"', '"old"'):
        return {column: {side.text.strip('"'): value} for column, value in (top or {}).items()}
    if side is not None:
        split[WHOLE_ROW] = side
    for column, change in (top or {}).items():
        sides = members(change)
        split[column] = change if sides is None else sides
    return split


def _select_list() -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier("l", c) for c in COLUMNS)


@contextmanager
def _reading(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
    """A cursor giving rows as dicts, changes and metadata as the server printed them (JsonText)."""
    with pinned(conn), conn.cursor(row_factory=dict_row) as cur:
        for name in ("json", "jsonb"):
            cur.adapters.register_loader(name, _JsonTextLoader)
        yield cur


def fetch(
    conn: psycopg.Connection[Any], filters: Filters, *, limit: int = 50, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Matching entries, newest first (by time, then id), at most limit; changes and metadata as JsonText.

    A search text goes through auditdb.search_log, which reads the closed months' search indexes
    within the reader's scope (row-level security cannot use them).
    """
    if filters.search:
        query = sql.SQL(
            "select {cols} from auditdb.search_log(%s, %s, %s) l order by l.occurred_at desc, l.id desc limit %s"
        ).format(cols=_select_list())
        params: list[Any] = [Jsonb(filters.describe()), before_id, limit, limit]
    else:
        where, params = where_clause(filters, before_id)
        query = sql.SQL(
            "select {cols} from auditdb.log l where {where} order by l.occurred_at desc, l.id desc limit %s"
        ).format(cols=_select_list(), where=where)
        params.append(limit)
    with _reading(conn) as cur:
        return cur.execute(query, params).fetchall()


def get_entry(conn: psycopg.Connection[Any], entry_id: int) -> dict[str, Any] | None:
    """One entry by id, or None when there is none this role may see; changes and metadata as JsonText."""
    with _reading(conn) as cur:
        return cur.execute(
            sql.SQL("select {} from auditdb.log l where l.id = %s").format(_select_list()),
            (entry_id,),
        ).fetchone()


# The entity's own entries and the one that changed its key to another, both found by index (the
# previous_id side is spelled as its partial index is, in revision 0003).
HISTORY_SQL = (
    "select * from auditdb.log l where l.entity_type = %s and (l.entity_id = %s"
    " or (l.metadata ? 'previous_id' and l.metadata->>'previous_id' = %s)) order by l.occurred_at, l.id"
)


def history(conn: psycopg.Connection[Any], entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    """The entity's entries, oldest first (following key changes through metadata.previous_id)."""
    with _reading(conn) as cur:
        return cur.execute(
            sql.SQL(HISTORY_SQL.replace("*", "{}", 1)).format(_select_list()), (entity_type, entity_id, entity_id)
        ).fetchall()


def _only(changes: dict[str, Change], side: str) -> bool:
    return bool(changes) and all(isinstance(c, dict) and set(c) == {side} for c in changes.values())


def state_at(entries: list[dict[str, Any]], as_of: datetime) -> tuple[dict[str, JsonText] | None, str]:
    """The entity's field values at as_of, rebuilt from its entries, and a note on how complete.

    A creation carries every column as `new`, an update the changed ones, a deletion only `old`:
    folding them in order gives the row as it was. Masked fields stay masked; values keep the
    server's spelling.
    """
    if not entries:
        return None, "no entries for this entity"
    upto = [e for e in entries if e["occurred_at"] <= as_of]
    if not upto:
        return None, (
            f"no entry at or before {as_of.isoformat()}: the earliest is at {entries[0]['occurred_at'].isoformat()}"
        )
    state: dict[str, JsonText] = {}
    for e in upto:
        changes = split_changes(e["changes"])
        if _only(changes, "old"):
            return None, f"deleted at {e['occurred_at'].isoformat()} (entry {e['id']})"
        for column, change in changes.items():
            if isinstance(change, dict) and "new" in change:
                state[column] = change["new"]
    if not _only(split_changes(upto[0]["changes"]), "new"):
        return state, (
            "the log does not reach back far enough: its first entry for this entity "
            f"(at {upto[0]['occurred_at'].isoformat()}) is not its creation; only fields changed "
            "since then are known"
        )
    return state, f"as of {as_of.isoformat()}, rebuilt from {len(upto)} entr{'y' if len(upto) == 1 else 'ies'}"

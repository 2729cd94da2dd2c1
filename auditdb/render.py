"""Text output that is safe on a terminal: control characters and escape sequences shown escaped."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from auditdb.query import JsonText, split_changes

__all__ = ["NOBODY", "change_lines", "cut", "safe", "table_lines", "value_text", "width"]

# C0 and C1 controls (ESC among them) and DEL; tabs and newlines are escaped too, so one value
# stays on one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# How log, show and history print an entry with no actor (and show any empty column): the
# column is NULL, nobody is named. Not "system": an application that forgot its context is not
# a system process, and an actor may well be called "system".
NOBODY = "-"


def safe(text: str) -> str:
    """The text with every control character written as a visible escape (\\x1b, \\n, …)."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def value_text(value: Any) -> str:
    """A value from `changes` as one safe line: strings bare, the rest as JSON, null as ∅.

    JsonText (what the reading queries return) prints as the server spelled it, so numbers show
    every stored digit and their scale (10.00, not 10.0).
    """
    if isinstance(value, JsonText):
        if value.text == "null":
            return "∅"
        return safe(json.loads(value.text) if value.text.startswith('"') else value.text)
    if value is None:
        return "∅"
    if isinstance(value, str):
        return safe(value)
    return safe(json.dumps(value, ensure_ascii=False, sort_keys=True))


def change_lines(changes: JsonText | dict[str, Any] | None) -> list[str]:
    """`field: old → new` lines for an entry's changes (creates show `→ new`, deletes `old →`)."""
    split = split_changes(changes) if not isinstance(changes, dict) else changes
    lines = []
    for field, change in sorted(split.items()):
        if not isinstance(change, dict):
            lines.append(f"{safe(field)}: {value_text(change)}")
            continue
        old = value_text(change["old"]) if "old" in change else ""
        new = value_text(change["new"]) if "new" in change else ""
        lines.append(f"{safe(field)}: {old} → {new}".replace(":  →", ": →"))
    return lines


def _cell_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """Terminal cells the (already safe) text takes: wide characters two, combining marks none."""
    return len(text) if text.isascii() else sum(map(_cell_width, text))


def cut(text: str, cells: int) -> str:
    """The text in at most `cells` terminal cells, ending in … when it had to be cut."""
    if width(text) <= cells:
        return text
    out, used = [], 0
    for char in text:
        w = _cell_width(char)
        if used + w > cells - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def _pad(text: str, cells: int, *, right: bool = False) -> str:
    fill = " " * max(0, cells - width(text))
    return fill + text if right else text + fill


# The log table's columns. In a pipe or a file only the entity name, free text, is cut (at
# NAME_CELLS; `show` and --format json/csv print it whole): who acted, the action and the entity
# are always whole. On a terminal the table fits its width: the name gives way first, then the
# widest of the others, none below _MIN_CELLS.
HEADER = ("ID", "TIME (UTC)", "ACTION", "ENTITY", "NAME", "USER")
NAME_CELLS = 24
_MIN_CELLS = 8
_NAME, _SHRINKABLE = 4, (2, 3, 5)


def table_lines(rows: Sequence[Sequence[str]], terminal: int | None) -> list[str]:
    """The header and rows (safe text cells, in HEADER's order) as aligned lines.

    terminal: the terminal's width in cells, or None when the output is not a terminal.
    """
    widths = [max([width(h), *(width(r[i]) for r in rows)]) for i, h in enumerate(HEADER)]
    if terminal is None:
        widths[_NAME] = min(widths[_NAME], NAME_CELLS)
        return _lines(rows, widths)
    excess = sum(widths) + len(widths) - 1 - terminal
    if excess > 0:  # the name gives way first
        given = min(excess, max(0, widths[_NAME] - _MIN_CELLS))
        widths[_NAME] -= given
        excess -= given
    if excess > 0:  # then the others, widest first: cut down to the highest level that frees enough
        low, high = _MIN_CELLS, max(widths[i] for i in _SHRINKABLE)
        while low < high:
            level = (low + high + 1) // 2
            if sum(max(0, widths[i] - level) for i in _SHRINKABLE) >= excess:
                low = level
            else:
                high = level - 1
        for i in _SHRINKABLE:
            widths[i] = min(widths[i], low)
    return _lines(rows, widths)


def _lines(rows: Sequence[Sequence[str]], widths: list[int]) -> list[str]:
    lines = []
    for cells in (HEADER, *rows):
        padded = [
            _pad(cut(cell, cells_wide), cells_wide, right=i == 0)
            for i, (cell, cells_wide) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append(" ".join(padded).rstrip())
    return lines

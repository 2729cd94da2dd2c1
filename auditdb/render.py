"""Text output that is safe on a terminal: control characters and escape sequences shown escaped."""

from __future__ import annotations

import json
import re
from typing import Any

from auditdb.query import JsonText, split_changes

__all__ = ["change_lines", "safe", "value_text"]

# C0 and C1 controls (ESC among them) and DEL; tabs and newlines are escaped too, so one value
# stays on one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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

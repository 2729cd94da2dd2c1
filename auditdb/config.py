"""auditdb.toml: parsed with tomllib into frozen dataclasses, every key and expression checked."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditdb.errors import ConfigError
from auditdb.expressions import Expression, parse_expression
from auditdb.names import qualified

__all__ = [
    "Config",
    "Defaults",
    "Rule",
    "TableConfig",
    "glob_regex",
    "load_config",
    "matches",
    "parse_config",
    "split_qualified",
]

ACTION_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
RULE_EVENTS = ("INSERT", "UPDATE", "DELETE")
_DEFAULT_KEYS = {"mask", "mask_last4", "ignore", "tenant", "require_actor", "system_roles", "refuse_data_ddl"}
_TABLE_KEYS = {"entity_type", "id", "name", "project", "soft_delete", "rules", "mask", "mask_last4", "ignore", "tenant"}
_RULE_KEYS = {"on", "when", "action"}


@dataclass(frozen=True)
class Rule:
    on: str
    action: str
    when: Expression | None = None


@dataclass(frozen=True)
class Defaults:
    mask: tuple[str, ...] = ()
    mask_last4: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tenant: str | None = None
    require_actor: bool = False
    system_roles: tuple[str, ...] = ()
    # Refuse DDL that changes tracked data without a row trigger (rewrites, ALTER TYPE of a type a
    # tracked column uses, partitions leaving or joining) unless the session user is a system role.
    refuse_data_ddl: bool = False


@dataclass(frozen=True)
class TableConfig:
    """One tracked table as the config declares it (columns not yet checked against the database)."""

    schema: str
    table: str
    entity_type: str
    id: tuple[str, ...] | None = None
    name: Expression | None = None
    project: str | None = None
    soft_delete: str | None = None
    rules: tuple[Rule, ...] = ()
    # Column-name globs: the defaults' plus the table's own.
    mask: tuple[str, ...] = ()
    mask_last4: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tenant: str | None = None

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.table)


@dataclass(frozen=True)
class Config:
    defaults: Defaults
    tables: tuple[TableConfig, ...] = field(default_factory=tuple)
    source: str = "auditdb.toml"


def matches(column: str, globs: tuple[str, ...]) -> bool:
    """Whether a column name matches one of the globs (case-sensitive; * and ? are the wildcards)."""
    # fullmatch: the whole name, as PostgreSQL's ~ with ^…$ reads it ($ before a newline is no end).
    return any(re.fullmatch(glob_regex(g), column, re.DOTALL) for g in globs)


def glob_regex(glob: str) -> str:
    """The POSIX regular expression (for PostgreSQL's ~) matching what the glob matches."""
    out = []
    for ch in glob:
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return "^" + "".join(out) + "$"


_IDENT = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)')


def split_qualified(key: str) -> tuple[str, str]:
    """`schema.table` (SQL quoting allowed) → (schema, table); an unqualified name is in public."""
    parts: list[str] = []
    pos = 0
    while True:
        match = _IDENT.match(key, pos)
        if not match:
            raise ConfigError(f'table {key!r}: not an SQL name (write schema.table, quoting with "" where needed)')
        parts.append(match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2).lower())
        pos = match.end()
        if pos == len(key):
            break
        if key[pos] != ".":
            raise ConfigError(f"table {key!r}: unexpected {key[pos]!r} at position {pos + 1}")
        pos += 1
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ConfigError(f"table {key!r}: write schema.table, not {len(parts)} parts")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(allowed))})")


def _camel(table: str) -> str:
    words = re.split(r"[^0-9A-Za-z]+", table)
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    if name.endswith("ies"):
        name = name[:-3] + "y"
    elif name.endswith("s") and not name.endswith("ss"):
        name = name[:-1]
    return name or "Entity"


def _rules(value: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{ on, when, action }} tables")
    rules = []
    for i, raw in enumerate(value, 1):
        here = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{here}: expected {{ on = …, action = … }}")
        _unknown(raw, _RULE_KEYS, here)
        on = _string(raw.get("on"), f"{here}.on").upper()
        if on not in RULE_EVENTS:
            raise ConfigError(f"{here}.on: {raw.get('on')!r} is not one of {', '.join(RULE_EVENTS)}")
        action = _string(raw.get("action"), f"{here}.action")
        if not ACTION_RE.match(action):
            raise ConfigError(f"{here}.action: {action!r} must match ^[A-Z][A-Z0-9_]*$")
        when = None
        if "when" in raw:
            rows = {"INSERT": ("new",), "UPDATE": ("old", "new"), "DELETE": ("old",)}[on]
            when = parse_expression(_string(raw["when"], f"{here}.when"), what=f"{here}.when", rows=rows)
        rules.append(Rule(on=on, action=action, when=when))
    return tuple(rules)


def parse_config(data: dict[str, Any], source: str = "auditdb.toml") -> Config:
    """Check a parsed TOML document and build the Config."""
    _unknown(data, {"defaults", "tables"}, source)
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise ConfigError(f"{source}: [defaults] must be a table")
    _unknown(raw_defaults, _DEFAULT_KEYS, f"{source} [defaults]")
    flags = {}
    for flag in ("require_actor", "refuse_data_ddl"):
        flags[flag] = raw_defaults.get(flag, False)
        if not isinstance(flags[flag], bool):
            raise ConfigError(f"{source} [defaults] {flag}: expected true or false")
    defaults = Defaults(
        mask=_strings(raw_defaults.get("mask", []), "defaults.mask"),
        mask_last4=_strings(raw_defaults.get("mask_last4", []), "defaults.mask_last4"),
        ignore=_strings(raw_defaults.get("ignore", []), "defaults.ignore"),
        tenant=_string(raw_defaults["tenant"], "defaults.tenant") if "tenant" in raw_defaults else None,
        require_actor=flags["require_actor"],
        system_roles=_strings(raw_defaults.get("system_roles", []), "defaults.system_roles"),
        refuse_data_ddl=flags["refuse_data_ddl"],
    )
    raw_tables = data.get("tables", {})
    if not isinstance(raw_tables, dict):
        raise ConfigError(f"{source}: [tables] must be a table of tables")
    tables = []
    seen: set[tuple[str, str]] = set()
    for key, raw in raw_tables.items():
        where = f"tables.{key!r}" if not re.fullmatch(r"[\w.]+", key) else f"tables.{key}"
        schema, table = split_qualified(key)
        if (schema, table) in seen:
            raise ConfigError(f"{where}: the table is configured twice")
        seen.add((schema, table))
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table of settings")
        _unknown(raw, _TABLE_KEYS, where)
        entity_type = raw.get("entity_type", _camel(table))
        entity_type = _string(entity_type, f"{where}.entity_type")
        ident = raw.get("id")
        tables.append(
            TableConfig(
                schema=schema,
                table=table,
                entity_type=entity_type,
                id=_strings(ident, f"{where}.id") if ident is not None else None,
                name=parse_expression(_string(raw["name"], f"{where}.name"), what=f"{where}.name")
                if "name" in raw
                else None,
                project=_string(raw["project"], f"{where}.project") if "project" in raw else None,
                soft_delete=_string(raw["soft_delete"], f"{where}.soft_delete") if "soft_delete" in raw else None,
                rules=_rules(raw.get("rules", []), f"{where}.rules"),
                mask=defaults.mask + _strings(raw.get("mask", []), f"{where}.mask"),
                mask_last4=defaults.mask_last4 + _strings(raw.get("mask_last4", []), f"{where}.mask_last4"),
                ignore=defaults.ignore + _strings(raw.get("ignore", []), f"{where}.ignore"),
                tenant=_string(raw["tenant"], f"{where}.tenant") if "tenant" in raw else defaults.tenant,
            )
        )
    return Config(defaults=defaults, tables=tuple(tables), source=source)


def load_config(path: Path) -> Config:
    """Read and check auditdb.toml."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (use --config PATH)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, str(path))

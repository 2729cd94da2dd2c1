"""auditdb.toml: parsed with tomllib into frozen dataclasses, every key and expression checked."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Sequence
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
    "check_columns",
    "defaults_near_misses",
    "defaults_slips",
    "did_you_mean",
    "glob_regex",
    "load_config",
    "matches",
    "parse_config",
    "split_qualified",
    "unknown_column",
    "untrackable",
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
    # The table's own globs, and whether its tenant column came from [defaults]: a slip in the
    # table's own settings is refused; [defaults] serve many tables (and events), so there a column
    # some table lacks is reported, not refused.
    own_mask: tuple[str, ...] = ()
    own_mask_last4: tuple[str, ...] = ()
    own_ignore: tuple[str, ...] = ()
    tenant_from_defaults: bool = False

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
        own_mask = _strings(raw.get("mask", []), f"{where}.mask")
        own_mask_last4 = _strings(raw.get("mask_last4", []), f"{where}.mask_last4")
        own_ignore = _strings(raw.get("ignore", []), f"{where}.ignore")
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
                mask=defaults.mask + own_mask,
                mask_last4=defaults.mask_last4 + own_mask_last4,
                ignore=defaults.ignore + own_ignore,
                tenant=_string(raw["tenant"], f"{where}.tenant") if "tenant" in raw else defaults.tenant,
                own_mask=own_mask,
                own_mask_last4=own_mask_last4,
                own_ignore=own_ignore,
                tenant_from_defaults="tenant" not in raw and defaults.tenant is not None,
            )
        )
    return Config(defaults=defaults, tables=tuple(tables), source=source)


# Schemas whose tables are never tracked, and why (pg_temp* and pg_toast* are handled by prefix).
_SYSTEM_SCHEMAS = {
    "auditdb": "it is in schema auditdb, auditdb's own (its guards protect it; capturing the log would "
    "log every entry it writes)",
    "pg_catalog": "it is in pg_catalog, PostgreSQL's system catalog",
    "information_schema": "it is in information_schema, PostgreSQL's system catalog",
}


def untrackable(cfg: TableConfig) -> str | None:
    """Why a table's schema alone rules it out (auditdb's own, PostgreSQL's, a session's temporary one)."""
    why = _SYSTEM_SCHEMAS.get(cfg.schema)
    if why is None and cfg.schema.startswith(("pg_temp", "pg_toast_temp")):
        why = "it is a temporary table (it lives only as long as its session)"
    elif why is None and cfg.schema.startswith("pg_"):
        why = f"it is in {cfg.schema}, one of PostgreSQL's own schemas"
    return why


def _shown(name: str) -> str:
    return name if name.isprintable() else repr(name)


def did_you_mean(word: str, names: Iterable[str], *, parts: bool = True) -> str:
    """' (did you mean 'x'?)' when a column is close to a name or glob, else ''.

    A glob that matches a column ignoring case is close; else the glob without its wildcards is
    compared with each column and (parts) each `_`-separated part of one ('pasword' → 'password_hash').
    """
    names = list(names)
    close = [n for n in names if re.fullmatch(glob_regex(word), n, re.DOTALL | re.IGNORECASE)]
    core = re.sub(r"[*?]", "", word)
    # Whole names as written first; then folded, and each part (the first column owning a part wins).
    folded = {
        part: n for n in reversed(names) for part in (n.lower(), *(n.lower().split("_") if parts else ())) if part
    }
    for text, candidates in ((core, {n: n for n in names}), (core.lower(), folded)):
        if not close:
            close = [candidates[m] for m in difflib.get_close_matches(text, list(candidates), n=1, cutoff=0.8)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_column(table: str, key: str, column: str, names: Sequence[str]) -> ConfigError:
    """The one-line refusal of a setting naming a column the table does not have."""
    hint = did_you_mean(column, names) or f" (columns: {', '.join(_shown(n) for n in names)})"
    return ConfigError(f"{table}: {key} names unknown column {column!r}{hint}")


def check_columns(cfg: TableConfig, columns: Sequence[str], every: Sequence[str]) -> tuple[list[str], list[str]]:
    """Refuse the table's own settings that name no column; return (notes, warnings) for the rest.

    columns are the captured columns, every also those capture cannot read (virtual generated).
    A mask glob that matches nothing fails open: the column it was written for is logged in clear,
    in a log nothing can be removed from, so the table's own are refused. An ignore glob that
    matches nothing only logs more: a warning. A [defaults] tenant column the table lacks means
    the tenant comes from the session context, which apply and status say for the table.
    """
    for key, globs in (("mask", cfg.own_mask), ("mask_last4", cfg.own_mask_last4)):
        for glob in globs:
            if not any(matches(n, (glob,)) for n in every):
                raise ConfigError(
                    f"{cfg.qualified}: {key} glob {glob!r} matches no column, so it would mask nothing"
                    f"{did_you_mean(glob, every)}: correct or remove it"
                )
    warnings = [
        f"{cfg.qualified}: ignore glob {glob!r} matches no column, so it ignores nothing{did_you_mean(glob, every)}"
        for glob in cfg.own_ignore
        if not any(matches(n, (glob,)) for n in every)
    ]
    for column in every:
        if matches(column, cfg.mask + cfg.mask_last4):
            continue
        for glob in cfg.mask + cfg.mask_last4:
            if re.fullmatch(glob_regex(glob), column, re.DOTALL | re.IGNORECASE):
                warnings.append(
                    f"{cfg.qualified}: column {column!r} is not masked: mask glob {glob!r} matches it only "
                    "ignoring case (globs are case-sensitive)"
                )
                break
    notes = []
    if cfg.tenant is not None and cfg.tenant not in columns:
        if not cfg.tenant_from_defaults:
            raise unknown_column(cfg.qualified, "tenant", cfg.tenant, columns)
        # A column a typo away is the one meant, most likely: taking the tenant from the session
        # context instead would file every entry of the table under whatever tenant a session set.
        # (Whole names only: tenant_name is not a slip for tenant_id.)
        hint = did_you_mean(cfg.tenant, columns, parts=False)
        if hint:
            raise ConfigError(
                f"{cfg.qualified}: [defaults] tenant names column {cfg.tenant!r}, which the table lacks{hint}: "
                "its tenant would come from the session context; fix [defaults] tenant (or set the table's own tenant)"
            )
        notes.append(f"tenant from the session context: no column {cfg.tenant!r} ([defaults] tenant)")
    return notes, warnings


def defaults_slips(config: Config, columns: Iterable[str]) -> list[str]:
    """Warnings for [defaults] globs that match no column of any tracked table (columns: all of theirs).

    Only warnings: a [defaults] mask also masks the keys of emitted events' metadata, and may be
    written for tables yet to come.
    """
    if not config.tables:
        return []
    every = sorted(set(columns))
    d = config.defaults
    events = " (it still masks those keys in events' metadata)"
    return [
        f"[defaults] {key} glob {glob!r} matches no column of any tracked table{did_you_mean(glob, every)}{extra}"
        for key, globs, extra in (
            ("mask", d.mask, events),
            ("mask_last4", d.mask_last4, events),
            ("ignore", d.ignore, ""),
        )
        for glob in globs
        if not any(matches(n, (glob,)) for n in every)
    ]


def defaults_near_misses(config: Config, columns: Iterable[str], unmasked: Iterable[str]) -> list[str]:
    """Refusals for [defaults] mask globs that match no column (of columns) but look like an unmasked one.

    A glob matching nothing is only a warning (it may be meant for events' metadata or tables yet
    to come), but one a letter away from a column that is shown in clear is a typo that would put
    that column's values into the append-only log: masks must not fail open.
    """
    if not config.tables:
        return []
    every, clear = set(columns), sorted(set(unmasked))
    d = config.defaults
    refused = []
    for key, globs in (("mask", d.mask), ("mask_last4", d.mask_last4)):
        for glob in globs:
            if any(matches(n, (glob,)) for n in every):
                continue
            hint = did_you_mean(glob, clear)
            if hint:
                refused.append(
                    f"[defaults] {key} glob {glob!r} matches no column{hint}: that column would be logged "
                    "in clear; fix the glob (or mask the column)"
                )
    return refused


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

"""Config expressions (`name`, rule `when`): parsed and checked with pglast, rendered from the AST.

An expression is accepted only when it is one scalar expression over the table's own columns
built from a closed set of node types, operators, casts and pure functions: config is never a
way to run SQL. Rendering rewrites each column reference to a row alias and deparses the tree,
so nothing of the original text reaches the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from auditdb.errors import ConfigError

__all__ = ["Expression", "parse_expression", "rerender"]

SAFE_FUNCTIONS = frozenset(
    {
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "lower",
        "upper",
        "initcap",
        "concat",
        "concat_ws",
        "trim",
        "btrim",
        "ltrim",
        "rtrim",
        "left",
        "right",
        "substr",
        "substring",
        "length",
        "char_length",
        "replace",
        "split_part",
        "lpad",
        "rpad",
        "abs",
        "round",
        "trunc",
        "md5",
    }
)
SAFE_OPERATORS = frozenset(
    {"=", "<>", "!=", "<", ">", "<=", ">=", "||", "+", "-", "*", "/", "%", "~~", "!~~", "~~*", "!~~*"}
)
SAFE_TYPES = frozenset(
    {
        "text",
        "varchar",
        "bpchar",
        "int2",
        "int4",
        "int8",
        "integer",
        "bigint",
        "smallint",
        "numeric",
        "float4",
        "float8",
        "bool",
        "boolean",
        "date",
        "timestamp",
        "timestamptz",
        "uuid",
        "jsonb",
        "json",
    }
)
_EXPR_KINDS = {
    enums.A_Expr_Kind.AEXPR_OP,
    enums.A_Expr_Kind.AEXPR_DISTINCT,
    enums.A_Expr_Kind.AEXPR_NOT_DISTINCT,
    enums.A_Expr_Kind.AEXPR_IN,
    enums.A_Expr_Kind.AEXPR_LIKE,
    enums.A_Expr_Kind.AEXPR_ILIKE,
    enums.A_Expr_Kind.AEXPR_NULLIF,
    enums.A_Expr_Kind.AEXPR_BETWEEN,
    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN,
}
_PLAIN_NODES = (
    ast.A_Const,
    ast.BoolExpr,
    ast.NullTest,
    ast.BooleanTest,
    ast.CaseExpr,
    ast.CaseWhen,
    ast.CoalesceExpr,
    ast.MinMaxExpr,
    ast.String,
    ast.Integer,
    ast.Float,
    ast.Boolean,
)


@dataclass(frozen=True)
class Expression:
    """A checked expression: its source text, the AST and the columns it reads."""

    source: str
    node: Any
    # (row, column): row is "" for `name` expressions, "old" or "new" for rule conditions
    columns: frozenset[tuple[str, str]]

    def render(self, aliases: dict[str, str], seen: Callable[[str, str], str | None] | None = None) -> str:
        """SQL for the expression with each column qualified by its row's alias.

        aliases maps "" / "old" / "new" to the alias of that row in the generated query; seen(alias,
        column), when given, may return the SQL the expression reads instead of the bare column
        (capture passes a column of a type PostgreSQL does not define as its text).
        """
        tree = _rewrite(self.node, aliases, seen)
        return str(RawStream()(tree))


def parse_expression(source: str, *, what: str, rows: tuple[str, ...] = ("",)) -> Expression:
    """Parse and check `source`; rows says which row qualifiers are allowed ("" = bare columns)."""
    text = source.strip()
    if not text:
        raise ConfigError(f"{what}: empty expression")
    try:
        statements = pglast.parse_sql("select " + text)
    except pglast.parser.ParseError as e:
        raise ConfigError(f"{what}: {source!r} is not an SQL expression ({e})") from None
    if len(statements) != 1:
        raise ConfigError(f"{what}: {source!r} must be one expression, not several statements")
    stmt = statements[0].stmt
    if (
        not isinstance(stmt, ast.SelectStmt)
        or stmt.targetList is None
        or len(stmt.targetList) != 1
        or any(
            getattr(stmt, f)
            for f in (
                "fromClause",
                "whereClause",
                "groupClause",
                "havingClause",
                "sortClause",
                "limitCount",
                "limitOffset",
                "distinctClause",
                "windowClause",
                "withClause",
                "intoClause",
                "lockingClause",
            )
        )
        or stmt.targetList[0].name is not None
    ):
        raise ConfigError(f"{what}: {source!r} must be a single expression over the row's columns")
    node = stmt.targetList[0].val
    columns: set[tuple[str, str]] = set()
    for child in _walk(node):
        _check(child, source, what, rows, columns)
    return Expression(source=text, node=node, columns=frozenset(columns))


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
        return
    if not isinstance(node, ast.Node):
        return
    yield node
    for name in node:
        value = getattr(node, name)
        if isinstance(value, ast.Node | tuple | list):
            yield from _walk(value)


def _refuse(source: str, what: str, reason: str) -> ConfigError:
    return ConfigError(f"{what}: {source!r} is refused: {reason}")


def _check(node: Any, source: str, what: str, rows: tuple[str, ...], columns: set[tuple[str, str]]) -> None:
    n: Any = node  # pglast types every field Optional; the parser fills what is used here
    if isinstance(node, ast.ColumnRef):
        if not all(isinstance(f, ast.String) for f in n.fields):
            raise _refuse(source, what, "`*` is not a column")
        names: list[str] = [f.sval for f in n.fields]
        if len(names) == 1 and "" in rows:
            columns.add(("", names[0]))
        elif len(names) == 2 and names[0] in rows and names[0]:
            columns.add((names[0], names[1]))
        else:
            allowed = " or ".join(f"{r.upper()}.column" for r in rows if r) or "a bare column name"
            raise _refuse(source, what, f"{'.'.join(names)} is not {allowed}")
    elif isinstance(node, ast.FuncCall):
        name = [f.sval for f in n.funcname]
        if name[0] == "pg_catalog":
            name = name[1:]
        if len(name) != 1 or name[0] not in SAFE_FUNCTIONS:
            raise _refuse(source, what, f"function {'.'.join(name)} is not one of {', '.join(sorted(SAFE_FUNCTIONS))}")
        if n.agg_star or n.agg_distinct or n.over or n.agg_filter or n.agg_order or n.func_variadic:
            raise _refuse(source, what, f"{name[0]}() may only be called plainly")
    elif isinstance(node, ast.A_Expr):
        if n.kind not in _EXPR_KINDS:
            raise _refuse(source, what, f"operator kind {n.kind.name} is not allowed")
        ops: list[str] = [str(f.sval) for f in n.name if isinstance(f, ast.String)]
        if len(ops) != 1 or ops[0] not in SAFE_OPERATORS | {"BETWEEN", "NOT BETWEEN"}:
            raise _refuse(source, what, f"operator {'.'.join(ops)} is not allowed")
    elif isinstance(node, ast.TypeCast):
        type_name = [f.sval for f in n.typeName.names]
        if type_name[0] == "pg_catalog":
            type_name = type_name[1:]
        if len(type_name) != 1 or type_name[0] not in SAFE_TYPES or n.typeName.arrayBounds:
            raise _refuse(source, what, f"cast to {'.'.join(type_name)} is not allowed")
    elif isinstance(node, ast.TypeName):
        pass  # checked with its TypeCast
    elif isinstance(node, _PLAIN_NODES):
        pass
    elif isinstance(node, ast.SubLink | ast.A_Indirection | ast.RowExpr | ast.ParamRef):
        raise _refuse(source, what, f"{type(node).__name__} (subqueries, parameters, rows) is not allowed")
    else:
        raise _refuse(source, what, f"{type(node).__name__} is not allowed")


def _rewrite(node: Any, aliases: dict[str, str], seen: Callable[[str, str], str | None] | None) -> Any:
    """A copy of the tree with every ColumnRef qualified by its row's alias (or replaced by seen())."""
    if isinstance(node, tuple):
        return tuple(_rewrite(n, aliases, seen) for n in node)
    if isinstance(node, list):
        return [_rewrite(n, aliases, seen) for n in node]
    if not isinstance(node, ast.Node):
        return node
    if isinstance(node, ast.ColumnRef):
        names = [f.sval for f in node.fields or ()]
        row, column = ("", names[0]) if len(names) == 1 else (names[0], names[1])
        replacement = seen(aliases[row], column) if seen else None
        if replacement is not None:
            return _parse_one(replacement)
        return ast.ColumnRef(fields=(ast.String(sval=aliases[row]), ast.String(sval=column)))
    values = {name: _rewrite(getattr(node, name), aliases, seen) for name in node}
    return type(node)(**values)


def _parse_one(text: str) -> Any:
    """The AST of one SQL expression that auditdb itself wrote."""
    stmt: Any = pglast.parse_sql("select " + text)[0].stmt
    return stmt.targetList[0].val


def rerender(text: str, seen: Callable[[str, str], str | None], known: set[str]) -> tuple[str, set[str]]:
    """An expression auditdb rendered earlier (columns as n.col / o.col), rendered again with seen().

    Returns the SQL and the columns it reads; KeyError when it reads a column not in known.
    """
    node = _parse_one(text)
    used: set[str] = set()
    for child in _walk(node):
        if isinstance(child, ast.ColumnRef):
            names = [str(f.sval) for f in child.fields or () if isinstance(f, ast.String)]
            if len(names) == 2:
                if names[1] not in known:
                    raise KeyError(names[1])
                used.add(names[1])
    aliases = {alias: alias for alias in ("n", "o")}

    def _rewrite_stored(node: Any) -> Any:
        if isinstance(node, tuple):
            return tuple(_rewrite_stored(n) for n in node)
        if isinstance(node, list):
            return [_rewrite_stored(n) for n in node]
        if not isinstance(node, ast.Node):
            return node
        if isinstance(node, ast.ColumnRef):
            names = [str(f.sval) for f in node.fields or () if isinstance(f, ast.String)]
            if len(names) == 2 and names[0] in aliases:
                replacement = seen(names[0], names[1])
                return _parse_one(replacement) if replacement is not None else node
            return node
        return type(node)(**{name: _rewrite_stored(getattr(node, name)) for name in node})

    return str(RawStream()(_rewrite_stored(node))), used

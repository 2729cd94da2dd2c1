"""The reading commands of the CLI: log, show, history, export."""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import psycopg

from auditdb import db
from auditdb.cli_common import connection as _connection
from auditdb.errors import AuditDBError
from auditdb.output import STDOUT, is_stdout, stdout_gone
from auditdb.render import NOBODY, change_lines, safe, table_lines, value_text

__all__ = ["COMMANDS"]


def _filter_options(f: Any) -> Any:
    """The filters `log` and `export` share."""
    options = [
        click.option(
            "--since", metavar="TIME", help="From TIME: ISO date/date-time (UTC) or relative: 30m, 12h, 7d, 2w."
        ),
        click.option("--until", metavar="TIME", help="Before TIME (same forms as --since)."),
        click.option("--action", "actions", multiple=True, metavar="ACTION", help="Only this action (repeatable)."),
        click.option(
            "--entity-type", "entity_types", multiple=True, metavar="TYPE", help="Only this entity type (repeatable)."
        ),
        click.option("--entity-id", metavar="ID", help="Only this entity id."),
        click.option("--user", metavar="WHO", help="Actor id, e-mail or name."),
        click.option("--project", metavar="ID", help="Only this project."),
        click.option("--tenant", metavar="ID", help="Only this tenant."),
        click.option("--search", metavar="TEXT", help="Text in entity name, entity id or actor e-mail."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _filters(kwargs: dict[str, Any]) -> Any:
    from auditdb.query import Filters

    for action in kwargs["actions"]:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", action):
            raise click.BadParameter(f"{action!r} is not an action name (e.g. LOGIN_FAILED)", param_hint="--action")
    times = {}
    for key in ("since", "until"):
        if kwargs[key] is not None:
            times[key] = _time(kwargs[key], f"--{key}")
    return Filters(
        since=times.get("since"),
        until=times.get("until"),
        actions=tuple(kwargs["actions"]),
        entity_types=tuple(kwargs["entity_types"]),
        entity_id=kwargs["entity_id"],
        user=kwargs["user"],
        project=kwargs["project"],
        tenant=kwargs["tenant"],
        search=kwargs["search"],
    )


def _time(text: str, option: str) -> Any:
    """A time an option names; empty is a usage error, not "no filter"."""
    from auditdb.query import parse_time

    if not text.strip():
        raise click.BadParameter(
            "an empty time: give one (2026-11-01, 2026-11-01T08:00 or 30m/12h/7d/2w)", param_hint=option
        )
    try:
        return parse_time(text)
    except AuditDBError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


def _warn_unlisted_admin(conn: psycopg.Connection[Any]) -> None:
    """auditdb_admin granted by plain GRANT (or for another database) reads nothing here: say so, not just nothing."""
    row = conn.execute(
        "select session_user::text, pg_catalog.pg_has_role(session_user, 'auditdb_admin', 'MEMBER')"
    ).fetchone()
    if row is None or not row[1]:
        return  # asked apart: a role without auditdb_admin may not call the functions below
    role = row[0]
    reads = conn.execute(
        "select auditdb.reader_sees_all() or pg_catalog.cardinality(auditdb.reader_tenants()) > 0"
    ).fetchone()
    if reads is not None and not reads[0]:
        click.echo(
            f"warning: role {role} holds auditdb_admin but is not an admin of this database: it reads nothing here "
            f"until a superuser runs auditdb grant {role} --admin",
            err=True,
        )


def _reader_error(e: psycopg.Error, conn_user: str) -> AuditDBError:
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return AuditDBError(
            f"permission denied: role {conn_user} can read the log only as a member of "
            "auditdb_admin or auditdb_viewer (auditdb grant ROLE --admin | --viewer --tenant T)"
        )
    return db.describe_error(e)


@contextmanager
def _reading(ctx: click.Context) -> Iterator[psycopg.Connection[Any]]:
    """A reader's connection: a role that reads nothing here is warned, and what PostgreSQL refuses
    inside is said as a reader needs to hear it."""
    with _connection(ctx) as conn:
        _warn_unlisted_admin(conn)
        try:
            yield conn
        except psycopg.Error as e:
            raise _reader_error(e, conn.info.user) from e


@contextmanager
def _printing(ctx: click.Context, output: str = "-") -> Iterator[None]:
    """Writing to stdout: a reader that went away (`| head`) ends the command quietly.

    Exit status 141, what a shell reports for a program SIGPIPE ended, with no message and no
    traceback (a failed export is recorded before this). Another write error names standard
    output. Either way stdout is pointed at /dev/null, so what is still buffered cannot fail again
    when Python exits. output: where an export writes (its errors name it).
    """
    try:
        yield
    except OSError as e:
        if e.filename not in (None, STDOUT, output) or not is_stdout(output):
            raise
        stdout_gone()
        if isinstance(e, BrokenPipeError):
            ctx.exit(128 + signal.SIGPIPE)
        raise OSError(e.errno, e.strerror, e.filename or STDOUT) from e


@click.command(name="log")
@_filter_options
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="At most this many.")
@click.option(
    "--before-id", type=click.IntRange(1, 2**63 - 1), metavar="ID", help="Page on: entries older than entry ID."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for reading, json (one array) or csv (the export's layout) for machines.",
)
@click.pass_context
def log_cmd(ctx: click.Context, /, limit: int, before_id: int | None, fmt: str, **kwargs: Any) -> None:
    """Show entries, newest first, filtered; --before-id pages on.

    `table` fits the terminal; in a pipe or a file no column is cut but the entity name (at
    24 characters). `json` is one array of objects keyed by auditdb.log's columns, values as
    stored; `csv` has the same header and columns as `export`. Stored control characters and
    escape sequences are shown escaped, never raw.
    """
    import csv as csvmod

    from auditdb.export import CSV_HEADER, csv_lines, entries_json
    from auditdb.query import fetch, get_entry

    filters = _filters(kwargs)
    with _reading(ctx) as conn:
        if before_id is not None and get_entry(conn, before_id) is None:
            raise AuditDBError(f"no entry {before_id} (or not visible to this role)")
        if fmt == "csv":
            lines = csv_lines(conn, filters, limit=limit, before_id=before_id)
        else:
            rows = fetch(conn, filters, limit=limit, before_id=before_id)
    with _printing(ctx):
        if fmt == "json":
            for piece in entries_json(rows):
                click.echo(piece, nl=False)
            click.echo()
        elif fmt == "csv":
            # The export's own rows (one layout), with control characters escaped as everywhere on a terminal.
            csvmod.writer(sys.stdout, lineterminator="\n").writerow(CSV_HEADER)
            for line in lines:
                click.echo(safe(line.removesuffix("\n")))
        else:
            terminal = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
            for line in table_lines([_table_row(r) for r in rows], terminal):
                click.echo(line)
            if len(rows) == limit:
                click.echo(f"(more: --before-id {rows[-1]['id']})", err=True)


def _table_row(r: dict[str, Any]) -> list[str]:
    entity = f"{r['entity_type'] or ''} {r['entity_id'] or ''}".strip()
    return [
        str(r["id"]),
        f"{r['occurred_at'].astimezone(UTC):%Y-%m-%d %H:%M:%S}",
        safe(r["action"]),
        safe(entity),
        safe(r["entity_name"] or ""),
        safe(_who(r)),
    ]


def _who(entry: dict[str, Any]) -> str:
    """Who acted, as log and history name them: the e-mail, else the actor id, else the name, else NOBODY."""
    return str(entry["actor_email"] or entry["actor_id"] or entry["actor_name"] or NOBODY)


@click.command()
@click.argument("entry_id", type=int)
@click.pass_context
def show(ctx: click.Context, entry_id: int) -> None:
    """Show one entry in full, each change as `field: old → new` (masked values stay masked).

    Values print as stored (10.00 stays 10.00); an empty column, an absent actor among them, is -.
    """
    from auditdb.query import COLUMNS, get_entry

    with _reading(ctx) as conn:
        entry = get_entry(conn, entry_id)
    if entry is None:
        raise AuditDBError(f"no entry {entry_id} (or not visible to this role)")
    with _printing(ctx):
        for key in (c for c in COLUMNS if c not in ("changes", "metadata")):
            value = entry[key]
            if key == "occurred_at":
                value = value.astimezone(UTC).isoformat()
            click.echo(f"{key:<12} {safe(str(value)) if value is not None else NOBODY}")
        click.echo(f"{'metadata':<12} {safe(str(entry['metadata']))}")
        lines = change_lines(entry["changes"])
        click.echo("changes" + ("" if lines else f"      {NOBODY}"))
        for line in lines:
            click.echo(f"  {line}")


@click.command()
@click.argument("entity_type")
@click.argument("entity_id")
@click.option("--as-of", metavar="TIME", help="Print the entity's (masked) state at TIME, rebuilt from the log.")
@click.pass_context
def history(ctx: click.Context, entity_type: str, entity_id: str, as_of: str | None) -> None:
    """An entity's timeline, oldest first; --as-of rebuilds its state at a moment.

    Values print as stored (10.00 stays 10.00); an entry with no actor is `by -`, as in log and show;
    an emitted event shows its metadata.
    """
    from auditdb.query import history as entity_history
    from auditdb.query import state_at

    moment = None if as_of is None else _time(as_of, "--as-of")
    with _reading(ctx) as conn:
        entries = entity_history(conn, entity_type, entity_id)
    if moment is None and not entries:
        raise AuditDBError(f"no entries for {entity_type} {entity_id} (or not visible to this role)")
    with _printing(ctx):
        if moment is not None:
            state, note = state_at(entries, moment)
            click.echo(f"{safe(entity_type)} {safe(entity_id)}: {note}")
            for field, value in sorted((state or {}).items()):
                click.echo(f"  {safe(field)}: {value_text(value)}")
            if state is None and not entries:
                ctx.exit(1)
            return
        for entry in entries:
            when = entry["occurred_at"].astimezone(UTC)
            click.echo(f"{when:%Y-%m-%d %H:%M:%S}  #{entry['id']}  {safe(entry['action'])}  by {safe(_who(entry))}")
            for line in change_lines(entry["changes"]):
                click.echo(f"    {line}")
            metadata = str(entry["metadata"]) if entry["metadata"] is not None else "{}"
            if entry["changes"] is None and metadata != "{}":  # an event: what it says is its metadata
                click.echo(f"    metadata: {safe(metadata)}")


@click.command(name="export")
@_filter_options
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="FILE|-",
    help="Where to write (- for standard output). A regular file (a symlink's target) is replaced only once "
    "complete; a device or FIFO is written in place.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="csv (the columns REFERENCE.md lists, spreadsheet-safe) or jsonl (one object per entry, values as stored).",
)
@click.option(
    "--actor",
    envvar="AUDITDB_ACTOR",
    help="Who exports (logged as actor_id; default $AUDITDB_ACTOR, else the database user).",
)
@click.option(
    "--manifest",
    metavar="FILE",
    help="Where to write the manifest (rows, sha256, sealed range; - for standard output). Default: "
    "OUTPUT.manifest.json beside a regular file; none for stdout or a device unless given.",
)
@click.option(
    "--key",
    "key_path",
    envvar="AUDITDB_SIGNING_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sign the manifest with this Ed25519 private key (PEM; default $AUDITDB_SIGNING_KEY).",
)
@click.pass_context
def export_cmd(
    ctx: click.Context,
    /,
    output: str,
    fmt: str,
    actor: str | None,
    manifest: str | None,
    key_path: Path | None,
    **kwargs: Any,
) -> None:
    """Stream matching entries to a file, newest first, with constant memory; log DATA_EXPORTED.

    csv: the header and columns REFERENCE.md lists, UTC ISO-8601 times, cells a spreadsheet would run as
    formulas prefixed with '. jsonl: one JSON object per entry, values as stored. A regular file
    is written under a temporary name beside it and renamed when complete (a failed export leaves
    no file under the target name); devices, FIFOs and stdout are written in place. An export
    that fails part-way is still logged, with complete false and the rows sent. A manifest
    (`auditdb verify-export` checks the file against it) is written beside a regular file, or
    to --manifest.
    """
    from auditdb.export import export

    if not output:
        raise click.BadParameter("an empty path: name a file, or - for standard output", param_hint="--output")
    _check_manifest_target(output, manifest, key_path)
    filters = _filters(kwargs)
    show_progress = not is_stdout(output) and sys.stderr.isatty()

    def progress(rows: int) -> None:
        if show_progress:
            click.echo(f"\r  {rows:,} rows…", nl=False, err=True)

    with _reading(ctx) as conn, _printing(ctx, output):
        rows = export(conn, filters, output, fmt=fmt, actor=actor, progress=progress, manifest=manifest, key=key_path)
    if show_progress:
        click.echo("", err=True)
    if not is_stdout(output):
        click.echo(f"exported {rows} entries to {safe(output)} ({fmt}); logged as DATA_EXPORTED", err=True)
    where = manifest or (output + ".manifest.json" if Path(output).is_file() else None)
    if where and where != "-":
        click.echo(f"manifest: {safe(where)}" + (" (signed)" if key_path else ""), err=True)


def _check_manifest_target(output: str, manifest: str | None, key_path: Path | None) -> None:
    """Refuse, before anything is exported, a manifest that could not be written or would destroy a file."""
    stdout = is_stdout(output)
    if manifest is None:
        if key_path is not None and stdout:
            raise click.BadParameter(
                "--key signs the manifest, and standard output gets none: add --manifest FILE", param_hint="--key"
            )
        return
    if manifest == "":
        raise click.BadParameter("an empty path: name a file, or - for standard output", param_hint="--manifest")
    if manifest == "-":
        if stdout:
            raise click.BadParameter("the export already goes to standard output", param_hint="--manifest")
        return
    target = Path(manifest)
    if target.is_dir():
        raise click.BadParameter(f"{manifest} is a directory", param_hint="--manifest")
    if not target.parent.is_dir():
        raise click.BadParameter(f"no directory {target.parent} to write {manifest} in", param_hint="--manifest")
    mine = {Path(output).resolve()} if not stdout else set()
    if key_path is not None:
        mine |= {key_path.resolve(), key_path.with_name(key_path.name + ".pub").resolve()}
    if target.resolve() in mine:
        raise click.BadParameter(f"{manifest} is the export's or the key's own file", param_hint="--manifest")
    if target.exists():
        from auditdb.manifest import read_manifest

        try:
            read_manifest(target)
        except AuditDBError:
            raise click.BadParameter(
                f"{manifest} exists and is not an export manifest: it is not replaced", param_hint="--manifest"
            ) from None


# Registered by auditdb.cli, which gives each its global options.
COMMANDS = (log_cmd, show, history, export_cmd)

"""The `auditdb` command line: parses options and calls the library; errors are one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg

from auditdb import db, partitions
from auditdb.cli_access import COMMANDS as ACCESS_COMMANDS
from auditdb.cli_common import CONFIG_HELP, DEBUG_HELP, DSN_HELP, Group
from auditdb.cli_common import connection as _connection
from auditdb.cli_proof import COMMANDS as PROOF_COMMANDS
from auditdb.cli_read import COMMANDS as READING_COMMANDS
from auditdb.install import install as run_install
from auditdb.install import install_sql, uninstall
from auditdb.integrity import structure_differences
from auditdb.output import stdout_gone
from auditdb.render import safe

__all__ = ["cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", metavar="DSN", help=DSN_HELP)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("auditdb.toml"),
    show_default=True,
    help=CONFIG_HELP,
)
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, config_path: Path, debug: bool) -> None:
    """auditdb: a compliance-grade audit log that lives in PostgreSQL.

    Triggers record every change of the tracked tables, with who, what, when and from where,
    into the append-only, monthly-partitioned table auditdb.log. --dsn, --config and --debug
    may also follow the command's name (auditdb install --dsn …).
    """
    ctx.ensure_object(dict)
    ctx.obj.update(dsn=dsn, config_path=config_path, debug=debug)


def _optional_config(ctx: click.Context) -> Any:
    """The config when the file exists (status and doctor work without one)."""
    from auditdb.config import load_config

    path: Path = ctx.obj["config_path"]
    return load_config(path) if path.exists() else None


@cli.command()
@click.option("--sql", "show_sql", is_flag=True, help="Print the SQL of a fresh install instead of running it.")
@click.pass_context
def install(ctx: click.Context, show_sql: bool) -> None:
    """Create or upgrade schema auditdb (alembic migrations; needs a superuser).

    Creates the roles auditdb_owner, auditdb_capture, auditdb_admin, auditdb_viewer and
    auditdb_writer when missing, the partitioned append-only log with its partitions, and every
    function, policy, event trigger and grant. Upgrading, it removes (and logs) whatever in schema
    auditdb it did not make, and warns when auditdb's tables differ from a fresh install. Running
    it again on a current schema changes nothing.
    """
    if show_sql:
        click.echo(install_sql())
        return
    before, after = run_install(ctx.obj["dsn"])
    if before == after:
        click.echo(f"auditdb is up to date (schema version {after})")
    elif before is None:
        click.echo(f"installed auditdb (schema version {after})")
    else:
        click.echo(f"upgraded auditdb from schema version {before} to {after}")
    with db.connect(ctx.obj["dsn"]) as conn:
        differences = structure_differences(conn)
    if differences:
        click.echo(
            f"warning: auditdb's tables differ from a fresh install in {len(differences)} place(s), e.g. "
            f"{differences[0]}: `auditdb doctor` lists them; a superuser restores them",
            err=True,
        )


@cli.command(name="uninstall")
@click.option("--yes", is_flag=True, help="Really drop schema auditdb and every audit entry in it.")
@click.pass_context
def uninstall_cmd(ctx: click.Context, yes: bool) -> None:
    """Drop schema auditdb, its triggers and event triggers, and the whole log.

    Roles stay: they are cluster-wide and may serve other databases. Refuses without --yes.
    """
    if not yes:
        raise click.UsageError("uninstall drops every audit entry; run it again with --yes to confirm")
    from auditdb.access import require_superuser_to

    with _connection(ctx, installed=False) as conn:
        require_superuser_to(conn, "uninstall", "it drops schema auditdb and its event triggers")
        removed = uninstall(conn)
    click.echo("removed schema auditdb (roles kept)" if removed else "auditdb was not installed; nothing to do")


@contextmanager
def _admin_connection(ctx: click.Context) -> Iterator[psycopg.Connection[Any]]:
    """A connection for the partitions commands: a role that may not read auditdb is told what they need."""
    with _connection(ctx, installed=False) as conn:
        db.require_installed(conn, needs=db.ADMIN_NEEDED)
        yield conn


@cli.group(name="partitions", cls=Group)
def partitions_group() -> None:
    """Monthly partitions of auditdb.log (one per UTC month)."""


@partitions_group.command(name="list")
@click.pass_context
def partitions_list(ctx: click.Context) -> None:
    """List the monthly partitions with estimated rows and size."""
    with _admin_connection(ctx) as conn:
        parts = partitions.list_partitions(conn)
    click.echo(f"{'partition':<16} {'month (UTC)':<11} {'rows (est.)':>12} {'size':>10}")
    for p in parts:
        click.echo(f"{p.name:<16} {p.month_start:%Y-%m}     {p.estimated_rows:>12} {_size(p.total_bytes):>10}")


@partitions_group.command(name="ensure")
@click.option(
    "--months-ahead",
    type=click.IntRange(0, 120),
    default=3,
    show_default=True,
    help="How many months after the current one must have a partition.",
)
@click.pass_context
def partitions_ensure(ctx: click.Context, months_ahead: int) -> None:
    """Create the partitions of this month and the next months where missing.

    Also gives each month that has closed its index for `log --search` (one month at a time,
    newest first, each in its own transaction; the worker does both hourly).
    """
    with _admin_connection(ctx) as conn:
        created = partitions.ensure(conn, months_ahead)
        if created:
            for name in created:
                click.echo(f"created auditdb.{name}")
        else:
            click.echo(f"partitions exist for this month and {months_ahead} ahead; nothing to do")
        due = partitions.unindexed_months(conn)
        for done in range(1, len(due) + 1):
            click.echo(f"indexing a closed month for --search ({done} of {len(due)})…", err=True)
            built = partitions.index_closed_month(conn)
            if built is None:
                break
            click.echo(f"indexed auditdb.{built.removesuffix('_search')} for --search")
        busy = partitions.unindexed_months(conn)
        if busy:
            click.echo(f"{', '.join(busy)} busy (late entries being written); the worker tries again hourly", err=True)


@partitions_group.command(name="prune")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    required=True,
    metavar="N",
    help="Retention in months: keep the current month and the N before it, drop older ones.",
)
@click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Archive each month to DIR/log_YYYY_MM.jsonl.gz (verified) before dropping it.",
)
@click.option("--force", is_flag=True, help="Drop months that were never archived too.")
@click.pass_context
def partitions_prune(ctx: click.Context, older_than: int, export_dir: Path | None, force: bool) -> None:
    """Drop whole past months beyond retention; never the current or a future month.

    A month holding entries is dropped only once archived (--export-dir now, or earlier),
    unless --force. Every drop is itself logged as AUDIT_CHANGED.
    """

    def progress(name: str, rows: int) -> None:
        if sys.stderr.isatty():
            click.echo(f"  archiving {name}: {rows} rows…", err=True)

    with _admin_connection(ctx) as conn:
        dropped = partitions.prune(conn, older_than, export_dir=export_dir, force=force, progress=progress)
    if not dropped:
        click.echo(f"no month older than {older_than} month(s) to drop")
    for p in dropped:
        where = f", archived to {p.archived_to}" if p.archived_to else ""
        click.echo(f"dropped auditdb.{p.name} ({p.rows} rows{where})")


@cli.command(name="apply")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option(
    "--remove",
    is_flag=True,
    help="Also remove the capture of tables captured but no longer in the config (without it, apply names them "
    "and leaves them captured).",
)
@click.option(
    "--unmask",
    is_flag=True,
    help="Allow a config that stops masking a column the installed capture masks (or masks it only to its last "
    "4 characters): its values are logged in clear from now on, and the entry of this apply names it.",
)
@click.pass_context
def apply_cmd(ctx: click.Context, dry_run: bool, remove: bool, unmask: bool) -> None:
    """Make the database's capture triggers match auditdb.toml: add and update; remove with --remove.

    Everything happens in one transaction. Each tracked table gets a generated capture
    function and statement-level triggers (on its partitions too), enabled ALWAYS. A table
    captured but no longer configured keeps its capture unless --remove is given: apply names it
    (on stderr) and exits 0. Settings that name a column the table lacks, a mask glob of a
    table's own that matches none of its columns, and tables auditdb cannot track are refused,
    changing nothing; so is a config that would unmask a column, unless --unmask is given. Needs a
    superuser.
    """
    from auditdb.config import load_config
    from auditdb.triggers import apply, require_superuser

    config = load_config(ctx.obj["config_path"])
    with _connection(ctx, installed=False) as conn:
        require_superuser(conn)  # before anything else, so a plain role hears what it lacks
        db.require_installed(conn)
        result = apply(conn, config, dry_run=dry_run, remove=remove, allow_unmask=unmask)
    for line in result.warnings:
        click.echo(f"warning: {safe(line)}", err=True)
    for line in result.notes:
        click.echo(f"note: {safe(line)}", err=True)
    for name in result.kept:
        click.echo(f"would remove {safe(name)}: run apply --remove to remove its capture", err=True)
    if dry_run:
        click.echo(result.sql if result.sql else "-- nothing to do: the database matches the config")
        return
    for verb, names in (("added", result.added), ("updated", result.replaced), ("removed", result.removed)):
        for name in names:
            click.echo(f"{verb} {safe(name)}")
    if not (result.added or result.replaced or result.removed):
        click.echo(f"nothing to do: {len(result.unchanged)} table(s) match the config")


@cli.command(name="status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """Show each tracked table's capture state; exit 1 on any drift.

    States: installed, outdated (config or auditdb changed, partitions without triggers),
    missing, disabled (a trigger not enabled ALWAYS), not in config (captured, not configured).
    """
    from auditdb.status import State, status

    config = _optional_config(ctx)
    with _connection(ctx) as conn:
        rows = status(conn, config)
    if config is None:
        click.echo(f"no config at {ctx.obj['config_path']}: showing captured tables only", err=True)
    if not rows:
        click.echo("no tracked tables")
    width = max((len(r.table) for r in rows), default=5)
    for r in rows:
        click.echo(f"{r.table:<{width}}  {r.state.value:<13}  {r.detail}".rstrip())
    if any(r.state is not State.INSTALLED for r in rows):
        ctx.exit(1)


@cli.command()
@click.option("--once", is_flag=True, help="Drain the queue and exit.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Events logged per transaction.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.05),
    default=0.5,
    show_default=True,
    help="Seconds between polls when no notification comes (a fallback: emit sends NOTIFY while a worker sleeps).",
)
@click.option("--no-listen", is_flag=True, help="Do not LISTEN; poll only.")
@click.option("--name", help="Name in the heartbeat table (default host:pid).")
@click.pass_context
def worker(
    ctx: click.Context, once: bool, batch_size: int, poll_interval: float, no_listen: bool, name: str | None
) -> None:
    """Move emitted events from the queue into auditdb.log, exactly once, in queue order.

    Woken by NOTIFY, polling as a fallback; reconnects when the server restarts; keeps monthly
    partitions 3 months ahead (hourly) and records a heartbeat for `auditdb doctor`. Several
    workers may run at once. SIGTERM/SIGINT finish the batch in hand and exit 0. Run it as a role
    granted auditdb_admin.
    """
    import logging

    from auditdb.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    w = Worker(ctx.obj["dsn"], batch_size=batch_size, poll_interval=poll_interval, listen=not no_listen)
    if name:
        w.name = name
    w.install_signal_handlers()
    processed = w.run(once=once)
    logging.getLogger("auditdb.worker").info("worker %s stopped; logged %d event(s)", w.name, processed)


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check auditdb's health: one line per check (ok / warn / fail); exit 1 on any fail.

    Connection and server version, schema version, event triggers, tracked tables against the
    config (when ./auditdb.toml or --config exists), worker heartbeat, event queue backlog,
    partitions for this month and the next 2, and an empty default partition.
    """
    from auditdb.doctor import run_checks

    config = _optional_config(ctx)
    with _connection(ctx, installed=False) as conn:
        checks = run_checks(conn, config)
    for check in checks:
        click.echo(f"{check.level:<4}  {check.name:<17}  {safe(check.detail)}")
    if any(c.level == "fail" for c in checks):
        ctx.exit(1)


def _no_database(f: Any) -> Any:
    """Mark a command that works on no database of the user's, so it takes no --dsn or --config."""
    f.no_database = True
    return f


@cli.command()
@click.option("--keep", is_flag=True, help="Leave the server running until Enter is pressed (for a look with psql).")
@_no_database
def demo(keep: bool) -> None:
    """Show auditdb at work on an embedded PostgreSQL; needs no setup and cleans up after itself."""
    from auditdb.demo import run_demo

    run_demo(click.echo, keep=keep)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def main() -> None:
    if sys.stderr is None:  # started with 2>&-: errors have nowhere to go, but the work can be done
        sys.stderr = open(os.devnull, "w")  # for the life of the process
    if sys.stdout is None:  # started with >&-: what the command prints would vanish
        click.echo("Error: standard output is closed: nothing could be printed", err=True)
        sys.exit(1)
    try:
        cli(prog_name="auditdb")
    except OSError as e:  # writing click's own output (--help, a usage error) failed
        stdout_gone()
        click.echo(f"Error: {e.strerror or e}: standard output", err=True)
        sys.exit(1)


# The reading, access and proof commands live in modules of their own.
for _command in (*READING_COMMANDS, *ACCESS_COMMANDS, *PROOF_COMMANDS):
    cli.add_command(_command)

"""What the command modules share: the group class (global options, one-line errors) and the connection."""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg

from auditdb import db
from auditdb.errors import AuditDBError
from auditdb.output import stdout_gone

__all__ = ["CONFIG_HELP", "DEBUG_HELP", "DSN_HELP", "Group", "connection"]


DSN_HELP = (
    "Database to work on (libpq string or URL). Default: $AUDITDB_DSN, then $DATABASE_URL, then libpq's PG* variables."
)
CONFIG_HELP = "Tracking config file."
DEBUG_HELP = "Show the full traceback on errors."


def _global_options() -> list[click.Option]:
    """auditdb's own options, accepted after a subcommand's name too (`auditdb install --dsn …`)."""
    return [
        click.Option(["--dsn", "_global_dsn"], metavar="DSN", help=DSN_HELP),
        click.Option(
            ["--config", "_global_config_path"],
            type=click.Path(path_type=Path),
            help=f"{CONFIG_HELP} [default: auditdb.toml]",
        ),
        click.Option(["--debug", "_global_debug"], is_flag=True, default=None, help=DEBUG_HELP),
    ]


def _taking_global_options(command: click.Command) -> None:
    """Add the global options to command; given there, they override what came before its name."""
    if any(p.name == "_global_dsn" for p in command.params) or command.callback is None:
        return
    command.params.extend(_global_options())
    callback = command.callback

    @functools.wraps(callback)
    def with_globals(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(f"_global_{name}", None) for name in ("dsn", "config_path", "debug")}
        obj = click.get_current_context().ensure_object(dict)
        obj.update({name: value for name, value in given.items() if value is not None})
        return callback(*args, **kwargs)

    command.callback = with_globals


class Group(click.Group):
    """Turns every failure into one line on stderr; --debug keeps the traceback."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not getattr(cmd.callback, "no_database", False):
            _taking_global_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except AuditDBError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(e)) from e
        except psycopg.Error as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(db.describe_error(e))) from e
        except BrokenPipeError as e:
            if e.filename is not None:
                raise click.ClickException(f"{e.strerror or e}: {e.filename}") from e
            # Standard output's reader went away (`auditdb status | head -1`): end quietly, with
            # the status a shell reports for a program SIGPIPE ended.
            stdout_gone()
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as e:  # an output file or directory that cannot be written, say
            if ctx.obj and ctx.obj.get("debug"):
                raise
            # Without a file name, the write that failed was to standard output (click.echo).
            where = f": {e.filename}" if e.filename else ": standard output"
            stdout_gone()
            raise click.ClickException(f"{e.strerror or e}{where}") from e
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None


@contextmanager
def connection(ctx: click.Context, *, installed: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """The database of --dsn (else the environment's), autocommit, closed on exit.

    Autocommit, so each `with conn.transaction()` of the library is a real transaction; installed:
    refuse a database without this release of auditdb first.
    """
    conn = db.connect(ctx.obj["dsn"], autocommit=True)
    try:
        if installed:
            db.require_installed(conn)
        yield conn
    finally:
        conn.close()

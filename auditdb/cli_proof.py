"""The proof commands of the CLI: seal, verify, checkpoint, verify-export."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
import psycopg

from auditdb.cli_common import connection as _connection
from auditdb.cli_read import _time
from auditdb.db import describe_error
from auditdb.errors import AuditDBError, SignatureMismatch

__all__ = ["COMMANDS"]


@click.command(name="seal")
@click.option(
    "--max-entries",
    type=click.IntRange(1, 1_000_000),
    default=100_000,
    show_default=True,
    help="At most this many entries per seal.",
)
@click.pass_context
def seal_cmd(ctx: click.Context, max_entries: int) -> None:
    """Seal the entries no running transaction can still add to (the worker does it every few seconds).

    Entries written since the last call are noted first and sealed by a later call, once every
    transaction that was running has ended: run it twice to seal what was just written.
    """
    from auditdb.seal import seal

    with _connection(ctx) as conn:
        try:
            sealed = seal(conn, max_entries)
        except psycopg.errors.InsufficientPrivilege:
            raise AuditDBError(
                f"{conn.info.user} may not seal: sealing needs an admin of this database "
                "(`auditdb grant ROLE --admin`) or a superuser"
            ) from None
        row = conn.execute(
            "select s.seal_id, s.upto_id, (select case when q.is_called then q.last_value else 0 end"
            " from auditdb.log_id_seq q) from auditdb.seal s order by s.seal_id desc limit 1"
        ).fetchone()
    seal_id, upto, newest = row if row else (None, 0, None)
    if sealed:
        click.echo(f"sealed {sealed} entries; the chain now ends at seal {seal_id} (entry {upto})")
    elif seal_id is not None and newest is not None and newest <= upto:
        click.echo(f"every entry is sealed (seal {seal_id}, up to entry {upto})")
    else:
        click.echo("nothing to seal yet: new entries are sealed once the transactions running now have ended")


@click.command(name="verify")
@click.option(
    "--since",
    metavar="TIME",
    callback=lambda _ctx, _param, value: None if value is None else _time(value, "--since"),
    help="Read only the entries of seals made since TIME (ISO, 7d, 12h); every seal and the chain are still checked.",
)
@click.option(
    "--archive-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where the archives of pruned months are (partitions prune --export-dir): their entries are checked there.",
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint file (auditdb checkpoint) the log must still extend.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The operator's public key (PEM) the checkpoint must be signed with.",
)
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    since: datetime | None,
    archive_dir: Path | None,
    checkpoint_path: Path | None,
    public_key: Path | None,
) -> None:
    """Recompute the seal chain and every sealed entry; report what was altered.

    Exit 0: every seal and every sealed entry is as sealed (and the log extends the checkpoint).
    Exit 1: findings, each on its own line. Exit 3: it could not check (connection, privileges).
    Hashes are computed here, never by the server. Entries of months retention dropped are read
    from their archives (--archive-dir); without them, the seals holding such entries are listed
    as not checked.
    """
    from auditdb.checkpoint import check_checkpoint, read_checkpoint
    from auditdb.seal import verify

    if checkpoint_path is not None and public_key is None:
        raise click.UsageError(
            "--checkpoint needs --public-key: the key in the file proves nothing about who signed it"
        )
    if public_key is not None and checkpoint_path is None:
        raise click.UsageError("--public-key checks a checkpoint: give --checkpoint FILE too")
    forged: list[str] = []
    try:
        checkpoint = None
        if checkpoint_path is not None:
            try:
                checkpoint = read_checkpoint(checkpoint_path, public_key)
            except SignatureMismatch as e:  # not the operator's checkpoint: a finding
                forged.append(str(e))
        with _connection(ctx) as conn:
            shown = [0]

            def progress(done: int) -> None:
                if done - shown[0] >= 1_000_000:
                    shown[0] = done
                    click.echo(f"… {done:,} entries checked", err=True)

            start = since.isoformat() if since is not None else None
            report = verify(conn, progress, since=start, archive_dir=archive_dir)
            findings = forged + [f.message for f in report.findings]
            if checkpoint is not None:
                findings += check_checkpoint(conn, checkpoint, report)
    except (AuditDBError, OSError) as e:
        click.echo(f"Error: could not verify: {e}", err=True)
        sys.exit(3)
    except psycopg.Error as e:  # nothing was proven either way
        click.echo(f"Error: could not verify: {describe_error(e)}", err=True)
        sys.exit(3)
    except (UnicodeError, ValueError, TypeError) as e:  # values it could not read (a SQL_ASCII database, say)
        click.echo(f"Error: could not verify: {type(e).__name__}: {e}", err=True)
        sys.exit(3)
    for line in findings:
        click.echo(f"FOUND  {line}")
    for line in report.unchecked:
        click.echo(f"NOT CHECKED  {line}")
    summary = (
        f"{report.seals} seals, {report.entries:,} sealed entries checked"
        + (f" ({report.archived:,} of them from archives)" if report.archived else "")
        + (f"; {report.skipped} seals made before --since: entries not read" if report.skipped else "")
        + (f"; {len(report.unchecked)} seals not checked (pruned months without archives)" if report.unchecked else "")
        + f"; {report.unsealed:,} entries not yet sealed"
    )
    if findings:
        click.echo(f"{len(findings)} finding(s); {summary}")
        sys.exit(1)
    click.echo(f"ok: {summary}" + (f"; extends checkpoint at seal {checkpoint['seal_id']}" if checkpoint else ""))


@click.command(name="checkpoint")
@click.option(
    "--key",
    "key_path",
    required=True,
    envvar="AUDITDB_SIGNING_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The operator's Ed25519 private key (PEM), kept outside the database (default $AUDITDB_SIGNING_KEY).",
)
@click.option("--generate-key", is_flag=True, help="Create --key (and KEY.pub) first; refuses to overwrite one.")
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    metavar="FILE",
    help="Where to write the checkpoint (- for stdout); an existing file is never overwritten.",
)
@click.pass_context
def checkpoint_cmd(ctx: click.Context, key_path: Path, generate_key: bool, output: str) -> None:
    """Write the newest seal, signed with the operator's key: `verify --checkpoint` proves the log still extends it.

    The chain of seal hashes is recomputed here first, and a chain that does not verify is not
    signed (the entries are `auditdb verify`'s to check). Exit 1 on any error.
    """
    from auditdb.checkpoint import generate_key as make_key
    from auditdb.checkpoint import make_checkpoint

    if not output:
        raise click.BadParameter("an empty path: name a file, or - for standard output", param_hint="--output")
    if output != "-":
        target = Path(output)
        if target.exists() or target.is_symlink():
            raise click.BadParameter(f"{output} exists: a checkpoint never replaces a file", param_hint="--output")
        if target.resolve() in (key_path.resolve(), key_path.with_name(key_path.name + ".pub").resolve()):
            raise click.BadParameter("that is the key's own file", param_hint="--output")

    if generate_key:
        public = make_key(key_path)
        click.echo(f"created {key_path} (private: keep it outside the database) and {public}", err=True)
    with _connection(ctx) as conn:
        checkpoint = make_checkpoint(conn, key_path)
    text = json.dumps(checkpoint, indent=2) + "\n"
    if output == "-":
        click.echo(text, nl=False)
    else:
        try:
            with open(output, "x", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise AuditDBError(f"cannot write the checkpoint {output}: {e.strerror or e}") from e
        click.echo(f"checkpoint at seal {checkpoint['seal_id']} written to {output}", err=True)


@click.command(name="verify-export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The export's manifest (default: FILE.manifest.json).",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The operator's public key (PEM): the manifest must be signed with it.",
)
def verify_export_cmd(file: Path, manifest_path: Path | None, public_key: Path | None) -> None:
    """Check an export file against its manifest: size, sha256, rows, and the signature.

    Needs no database. Exit 0: the file is the export as written (and signed with --public-key's
    key when given). Exit 1: what differs, each on its own line. Exit 3: a file could not be read.
    A signed manifest checked without --public-key proves only that it is intact, not who signed it.
    """
    from auditdb.manifest import describe, verify_export

    if not str(file) or str(file) == ".":
        raise click.BadParameter("an empty path: name the export file", param_hint="FILE")
    where = manifest_path or file.with_name(file.name + ".manifest.json")
    try:
        manifest, problems = verify_export(file, where, public_key)
    except AuditDBError as e:
        click.echo(f"Error: could not verify the export: {e}", err=True)
        sys.exit(3)
    for line in problems:
        click.echo(f"FOUND  {line}")
    if problems:
        click.echo(f"{len(problems)} finding(s): {file} and {where} are not an export as `auditdb export` wrote it")
        sys.exit(1)
    if "signature" in manifest:
        who = (
            "signed with the key in " + str(public_key)
            if public_key
            else "signature intact, signer not checked (give --public-key)"
        )
    else:
        who = "not signed"
    click.echo(f"ok: {describe(manifest)}; {who}")


COMMANDS = (seal_cmd, verify_cmd, checkpoint_cmd, verify_export_cmd)

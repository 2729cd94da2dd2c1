"""Export manifests: what an export holds, so an auditor can check a file without the database.

`auditdb export` writes one beside a regular file (FILE.manifest.json) or to --manifest: the
filters, the format, the row count, the file's size and SHA-256, which entries it holds (lowest
and highest id) and the newest seal when it was made (how many of its entries that seal covers),
signed with the operator's Ed25519 key when one is given. `auditdb verify-export` checks a file
against it: size, digest, rows counted in the file, and the signature.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditdb.checkpoint import check_signature, load_private_key, sign
from auditdb.errors import AuditDBError, SignatureMismatch

__all__ = ["FORMAT", "count_rows", "describe", "read_manifest", "verify_export", "write_manifest"]

FORMAT = "auditdb-export-manifest-1"
_READ = 1 << 20


def write_manifest(path: str, manifest: dict[str, Any], key_path: Path | None) -> dict[str, Any]:
    """Write the manifest (signed when key_path is given) under a temporary name, then rename it onto path."""
    document = {"format": FORMAT, **manifest, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if key_path is not None:
        document = sign(document, load_private_key(key_path))
    text = json.dumps(document, indent=2, ensure_ascii=True) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return document
    directory, base = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.partial")
    try:
        with open(temp, "x", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as e:
        Path(temp).unlink(missing_ok=True)
        raise AuditDBError(f"cannot write the manifest {path}: {e.strerror or e}") from e
    return document


def count_rows(path: Path, fmt: str) -> int:
    """Entries in an export file: CSV records after the header, or JSONL lines.

    The CSV is read as Latin-1, byte for byte: its quotes, commas and line ends are ASCII in every
    encoding a database can have, so the count holds whatever the export's encoding; no cell is
    too long (a 1 MB metadata cell is an honest export).
    """
    if fmt == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="latin-1") as f:
            records = sum(1 for _ in csv.reader(f))
    finally:
        csv.field_size_limit(limit)
    return max(records - 1, 0)


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


_SEALED_FIELDS = {"seal_id": int, "upto_id": int, "seal_sha256": str, "entries_sealed": int, "entries_not_sealed": int}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at path, its shape checked (AuditDBError otherwise: verify-export could not check)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AuditDBError(f"cannot read the manifest {path}: {e.strerror or e}") from e
    except (ValueError, RecursionError) as e:
        raise AuditDBError(f"{path} is not an auditdb export manifest (not JSON: {e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AuditDBError(f"{path} is not an auditdb export manifest ({FORMAT})")
    for name, kind in (("rows", int), ("bytes", int), ("sha256", str), ("export_format", str)):
        if not isinstance(manifest.get(name), kind) or isinstance(manifest.get(name), bool):
            raise AuditDBError(f"{path}: the manifest has no valid {name!r}")
    sealed = manifest.get("sealed")
    if sealed is not None and not (
        isinstance(sealed, dict)
        and all(isinstance(sealed.get(k), t) and not isinstance(sealed.get(k), bool) for k, t in _SEALED_FIELDS.items())
    ):
        raise AuditDBError(f"{path}: the manifest's 'sealed' is not a seal")
    if not isinstance(manifest.get("filters", {}), dict):
        raise AuditDBError(f"{path}: the manifest's 'filters' is not an object")
    return manifest


def verify_export(file: Path, manifest_path: Path, public_key: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The manifest, and what about the file or manifest does not hold (empty: the export is as written).

    AuditDBError when something cannot be read at all.
    """
    if not file.is_file():
        raise AuditDBError(f"cannot read {file}: " + ("it is not a file" if file.exists() else "no such file"))
    manifest = read_manifest(manifest_path)
    problems: list[str] = []
    signed = "signature" in manifest or "public_key" in manifest
    if signed:
        try:
            check_signature(manifest, manifest_path, public_key)
        except SignatureMismatch as e:
            problems.append(str(e))
    elif public_key is not None:
        problems.append(f"{manifest_path} is not signed, so nothing shows it was signed with the key in {public_key}")
    try:
        size, digest = _digest(file)
        rows = count_rows(file, manifest["export_format"])
    except (OSError, UnicodeError, csv.Error) as e:
        raise AuditDBError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from e
    if size != manifest["bytes"]:
        problems.append(f"{file} has {size:,} bytes; the manifest says {manifest['bytes']:,}")
    if digest != manifest["sha256"]:
        wanted = manifest["sha256"][:16]
        problems.append(f"{file} does not hash to the manifest's sha256 ({digest[:16]}…, not {wanted}…)")
    if rows != manifest["rows"]:
        problems.append(f"{file} holds {rows:,} entries; the manifest says {manifest['rows']:,}")
    named = manifest.get("file")
    if named not in (None, "-", file.name):
        problems.append(f"the manifest describes an export written as {named!r}, not {file.name!r}")
    return manifest, problems


def describe(manifest: dict[str, Any]) -> str:
    """One line on what the manifest says the export holds."""
    sealed = manifest.get("sealed")
    seal_text = (
        f"; {sealed['entries_sealed']:,} of them under seal {sealed['seal_id']} ({sealed['seal_sha256'][:16]}…)"
        if isinstance(sealed, dict)
        else ""
    )
    when = manifest.get("created_at", "?")
    filters = json.dumps(manifest.get("filters") or {}, sort_keys=True, ensure_ascii=True)
    return (
        f"{manifest['rows']:,} entries ({manifest['export_format']}) of database {manifest.get('database')!r} "
        f"exported {when} with filters {filters}{seal_text}"
    )

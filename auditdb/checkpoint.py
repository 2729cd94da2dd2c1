"""Checkpoints: the newest seal, signed with an Ed25519 key that lives with the operator.

A checkpoint is a JSON object: the database's name, the seal's id, upto_id and hash, when it was
made, the public key and a signature over the rest (its JSON with sorted keys, no spaces). An
older checkpoint catches a rewrite of the whole chain: the seal it names no longer hashes to what
it recorded, or is gone.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auditdb.errors import AuditDBError, SignatureMismatch
from auditdb.seal import Report, verify

__all__ = [
    "check_checkpoint",
    "check_signature",
    "generate_key",
    "load_private_key",
    "make_checkpoint",
    "read_checkpoint",
    "sign",
]

FORMAT = "auditdb-checkpoint-1"


def generate_key(path: Path) -> Path:
    """Create an Ed25519 private key at path (mode 600) and its public key at path.pub."""
    if path.exists():
        raise AuditDBError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public


def _payload(checkpoint: dict[str, Any]) -> bytes:
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _raw_public(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private_key(key_path: Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 private key (PEM, no password)."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:  # TypeError: a key that needs a password
        raise AuditDBError(f"cannot read the private key {key_path}: {getattr(e, 'strerror', None) or e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditDBError(f"{key_path} is not an Ed25519 private key")
    return key


def sign(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The document with public_key and a signature over the rest (its JSON, sorted keys, no spaces)."""
    signed = {k: v for k, v in document.items() if k != "signature"}
    signed["public_key"] = _raw_public(key.public_key())
    signed["signature"] = base64.b64encode(key.sign(_payload(signed))).decode()
    return signed


def check_signature(document: dict[str, Any], path: Path | str, public_key: Path | None) -> None:
    """Check the document's signature (with public_key when given, which it must name).

    AuditDBError when the public key cannot be read (nothing was checked); SignatureMismatch when
    the document is not what that key signed.
    """
    pinned: Ed25519PublicKey | None = None
    if public_key is not None:
        try:
            loaded = serialization.load_pem_public_key(public_key.read_bytes())
        except ValueError as e:
            raise AuditDBError(f"{public_key} is not a PEM public key (give KEY.pub, not the private key)") from e
        except OSError as e:
            raise AuditDBError(f"cannot read the public key {public_key}: {e.strerror or e}") from e
        if not isinstance(loaded, Ed25519PublicKey):
            raise AuditDBError(f"{public_key} is not an Ed25519 public key")
        pinned = loaded
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(document["public_key"]))
        signature = base64.b64decode(document["signature"])
    except (ValueError, KeyError, TypeError) as e:
        raise SignatureMismatch(f"{path} carries no readable signature ({e})") from e
    if pinned is not None and _raw_public(pinned) != document["public_key"]:
        raise SignatureMismatch(f"{path} was not signed with the key in {public_key}")
    try:
        embedded.verify(signature, _payload(document))
    except InvalidSignature:
        raise SignatureMismatch(f"{path}: the signature does not match its contents (the file was altered)") from None


def make_checkpoint(conn: psycopg.Connection[Any], key_path: Path) -> dict[str, Any]:
    """The newest seal, signed with the private key at key_path."""
    key = load_private_key(key_path)
    # What is signed is the chain as recomputed here, never a hash the server hands over: every
    # seal's own hash and its link to the one before (their entries are verify's business).
    report = verify(conn, since="infinity")
    if report.findings:
        raise AuditDBError(
            "the seal chain does not verify, so there is nothing to sign: "
            + "; ".join(f.message for f in report.findings[:3])
            + " (run `auditdb verify`)"
        )
    if report.seals_last_id is None:
        raise AuditDBError("no seal yet: run `auditdb seal` (twice: the first notes the range) or start the worker")
    # The last seal verify recomputed (the worker may have added one since: the next checkpoint has it).
    row = conn.execute(
        """select current_database(), s.seal_id, s.upto_id, encode(s.seal_sha256, 'hex'),
                  to_char(s.sealed_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
             from auditdb.seal s where s.seal_id = %s""",
        (report.seals_last_id,),
    ).fetchone()
    recomputed = report.chain[report.seals_last_id]
    if row is None or recomputed.hex() != row[3]:
        raise AuditDBError(f"seal {report.seals_last_id} changed while the chain was checked: run it again")
    checkpoint: dict[str, Any] = {
        "format": FORMAT,
        "database": row[0],
        "seal_id": row[1],
        "upto_id": row[2],
        "seal_sha256": row[3],
        "sealed_at": row[4],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return sign(checkpoint, key)


def read_checkpoint(path: Path, public_key: Path | None) -> dict[str, Any]:
    """A checkpoint whose signature checks (with public_key when given, which it must name).

    AuditDBError when it cannot be read; SignatureMismatch when it is not what the key signed.
    """
    try:
        checkpoint = json.loads(path.read_text())
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
            raise ValueError(f"not {FORMAT}")
        for name, kind in (("database", str), ("seal_id", int), ("seal_sha256", str)):
            if not isinstance(checkpoint.get(name), kind) or isinstance(checkpoint.get(name), bool):
                raise ValueError(f"no valid {name!r}")
    except OSError as e:
        raise AuditDBError(f"cannot read the checkpoint {path}: {e.strerror or e}") from e
    except (ValueError, RecursionError) as e:
        raise AuditDBError(f"{path} is not an auditdb checkpoint ({e or 'wrong format'})") from e
    check_signature(checkpoint, path, public_key)
    return checkpoint


def check_checkpoint(conn: psycopg.Connection[Any], checkpoint: dict[str, Any], report: Report) -> list[str]:
    """What stops the log from extending the checkpoint (verify has recomputed the chain)."""
    if checkpoint["database"] != conn.info.dbname:
        return [f"the checkpoint is of database {checkpoint['database']!r}, not {conn.info.dbname!r}"]
    recomputed = report.chain.get(int(checkpoint["seal_id"]))
    if recomputed is None:
        return [
            f"seal {checkpoint['seal_id']} of the checkpoint is gone: the chain was cut back "
            f"(it now ends at seal {report.seals_last_id or 'none'})"
        ]
    if recomputed.hex() != checkpoint["seal_sha256"]:
        return [
            f"seal {checkpoint['seal_id']} no longer hashes to the checkpoint's {checkpoint['seal_sha256'][:16]}…: "
            "the chain was rewritten"
        ]
    return []

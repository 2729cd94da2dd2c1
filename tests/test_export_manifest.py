"""Export manifests and `auditdb verify-export`: a file is checked against what export wrote, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.checkpoint import generate_key
from auditdb.cli import cli
from auditdb.seal import seal
from tests.test_export import hostile  # noqa: F401  (the fixture, used by name)


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _sealed(conn: psycopg.Connection[Any]) -> None:
    seal(conn)
    seal(conn)


@pytest.mark.usefixtures("hostile")
def test_an_export_to_a_file_gets_a_manifest_that_verifies(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    _sealed(conn)
    with conn.transaction():  # one entry more, not sealed yet
        conn.execute("set local role auditdb_owner")
        conn.execute("insert into auditdb.log (action, entity_type, entity_id) values ('LOGIN', 'User', 'u9')")
    out = tmp_path / "audit.csv"
    result = _invoke("--dsn", dsn, "export", "--output", str(out), "--action", "UPDATE", "--action", "LOGIN")
    assert result.exit_code == 0, result.output
    assert f"manifest: {out}.manifest.json" in result.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    ids = [r[0] for r in conn.execute("select id from auditdb.log where action in ('UPDATE', 'LOGIN') order by id")]
    assert manifest["rows"] == len(ids) == 9
    assert manifest["bytes"] == out.stat().st_size and manifest["file"] == "audit.csv"
    assert manifest["filters"]["actions"] == ["UPDATE", "LOGIN"] and manifest["export_format"] == "csv"
    assert manifest["ids"] == {"lowest": ids[0], "highest": ids[-1]}
    newest = conn.execute(
        "select seal_id, upto_id, encode(seal_sha256, 'hex') from auditdb.seal order by 1 desc"
    ).fetchone()
    assert newest is not None
    assert manifest["sealed"] == {
        "seal_id": newest[0],
        "upto_id": newest[1],
        "seal_sha256": newest[2],
        "entries_sealed": 8,
        "entries_not_sealed": 1,
    }
    assert "signature" not in manifest
    checked = _invoke("verify-export", str(out))
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(f"ok: 9 entries (csv) of database {conn.info.dbname!r} exported ")
    assert 'with filters {"actions": ["UPDATE", "LOGIN"]}; 8 of them under seal' in checked.output
    assert "not signed" in checked.output


@pytest.mark.usefixtures("hostile")
def test_an_altered_export_is_found(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    assert _invoke("--dsn", dsn, "export", "--output", str(out), "--format", "jsonl").exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-1]))  # an entry removed
    result = _invoke("verify-export", str(out))
    assert result.exit_code == 1, result.output
    assert "holds 7 entries; the manifest says 8" in result.output
    assert "does not hash to the manifest's sha256" in result.output
    out.write_bytes(b"".join(lines).replace(b"Doc", b"Dog", 1))  # same size and rows, other bytes
    result = _invoke("verify-export", str(out))
    assert result.exit_code == 1 and "does not hash" in result.output and "bytes" not in result.output, result.output


@pytest.mark.usefixtures("hostile")
def test_a_signed_manifest_proves_who_exported(dsn: str, tmp_path: Path) -> None:
    key, other = tmp_path / "op.pem", tmp_path / "other.pem"
    generate_key(other)
    out = tmp_path / "signed.csv"
    # the key from the environment, as checkpoint takes it
    made = CliRunner().invoke(
        cli, ["--dsn", dsn, "export", "--output", str(out)], env={"AUDITDB_SIGNING_KEY": str(key)}
    )
    assert made.exit_code != 0 and "cannot read the private key" in made.output  # no key there yet: nothing written
    assert not out.exists()
    generate_key(key)
    made = CliRunner().invoke(
        cli, ["--dsn", dsn, "export", "--output", str(out)], env={"AUDITDB_SIGNING_KEY": str(key)}
    )
    assert made.exit_code == 0 and "(signed)" in made.output, made.output
    ok = _invoke("verify-export", str(out), "--public-key", f"{key}.pub")
    assert ok.exit_code == 0 and f"signed with the key in {key}.pub" in ok.output, ok.output
    unpinned = _invoke("verify-export", str(out))
    assert unpinned.exit_code == 0 and "signer not checked" in unpinned.output
    wrong = _invoke("verify-export", str(out), "--public-key", f"{other}.pub")
    assert wrong.exit_code == 1 and "was not signed with the key" in wrong.output, wrong.output
    manifest_path = Path(f"{out}.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["rows"] -= 1
    manifest_path.write_text(json.dumps(manifest))
    forged = _invoke("verify-export", str(out), "--public-key", f"{key}.pub")
    assert forged.exit_code == 1 and "the signature does not match its contents" in forged.output, forged.output


@pytest.mark.usefixtures("hostile")
def test_stdout_gets_a_manifest_only_where_asked(dsn: str, tmp_path: Path) -> None:
    plain = _invoke("--dsn", dsn, "export", "--output", "-")
    assert plain.exit_code == 0 and not list(tmp_path.iterdir())
    where = tmp_path / "stdout.manifest.json"
    result = CliRunner().invoke(cli, ["--dsn", dsn, "export", "--output", "-", "--manifest", str(where)])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "saved.csv"
    saved.write_bytes(result.stdout_bytes)
    assert json.loads(where.read_text())["file"] == "-"
    checked = _invoke("verify-export", str(saved), "--manifest", str(where))
    assert checked.exit_code == 0, checked.output
    generate_key(tmp_path / "op.pem")
    unsigned = _invoke(
        "verify-export", str(saved), "--manifest", str(where), "--public-key", str(tmp_path / "op.pem.pub")
    )
    assert unsigned.exit_code == 1 and "is not signed" in unsigned.output, unsigned.output


@pytest.mark.usefixtures("hostile")
def test_a_viewer_export_names_no_seal(
    conn: psycopg.Connection[Any], dsn: str, make_role: Any, pg_server: Any, dbname: str, tmp_path: Path
) -> None:
    _sealed(conn)
    viewer = make_role()
    assert _invoke("--dsn", dsn, "grant", viewer, "--viewer", "--tenant", "t1").exit_code == 0
    out = tmp_path / "viewer.csv"
    result = _invoke("--dsn", pg_server.dsn(dbname, user=viewer), "export", "--output", str(out))
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["rows"] == 8 and manifest["sealed"] is None
    assert _invoke("verify-export", str(out)).exit_code == 0


def test_verify_export_without_its_manifest_could_not_check(tmp_path: Path) -> None:
    out = tmp_path / "lonely.csv"
    out.write_text("Timestamp\n")
    result = _invoke("verify-export", str(out))
    assert result.exit_code == 3 and "cannot read the manifest" in result.output, result.output


@pytest.mark.usefixtures("hostile")
def test_another_exports_file_and_manifest_are_found(dsn: str, tmp_path: Path) -> None:
    key = tmp_path / "op.pem"
    generate_key(key)
    full, narrow = tmp_path / "full.csv", tmp_path / "narrow.csv"
    assert _invoke("--dsn", dsn, "export", "-o", str(full), "--key", str(key)).exit_code == 0
    assert _invoke("--dsn", dsn, "export", "-o", str(narrow), "--entity-id", "1", "--key", str(key)).exit_code == 0
    full.write_bytes(narrow.read_bytes())
    Path(f"{full}.manifest.json").write_bytes(Path(f"{narrow}.manifest.json").read_bytes())
    result = _invoke("verify-export", str(full), "--public-key", f"{key}.pub")
    assert result.exit_code == 1, result.output
    assert "the manifest describes an export written as 'narrow.csv', not 'full.csv'" in result.output


def test_rows_are_counted_whatever_the_cells_hold_and_their_encoding(tmp_path: Path) -> None:
    """A 1 MB metadata cell, a cell with line breaks, and a Latin-1 file (a database not in UTF-8)."""
    from auditdb.manifest import count_rows

    out = tmp_path / "a.csv"
    text = 'Timestamp,Metadata\n2026,"{""blob"": ""' + "x" * 1_000_000 + '""}"\n2026,"two\nlines, Zoé"\n'
    out.write_bytes(text.encode("latin-1"))
    assert count_rows(out, "csv") == 2


@pytest.mark.usefixtures("hostile")
def test_a_checkpoint_signs_the_last_seal_it_checked_while_sealing_goes_on(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditdb import checkpoint as checkpoint_module

    _sealed(conn)
    checked = checkpoint_module.verify

    def verify_then_seal_more(*args: Any, **kwargs: Any) -> Any:
        report = checked(*args, **kwargs)
        with conn.transaction():
            conn.execute("set local role auditdb_owner")
            conn.execute("insert into auditdb.log (action, entity_type) values ('LOGIN', 'User')")
        _sealed(conn)  # the worker, meanwhile
        return report

    monkeypatch.setattr(checkpoint_module, "verify", verify_then_seal_more)
    key = tmp_path / "op.pem"
    generate_key(key)
    made = checkpoint_module.make_checkpoint(conn, key)
    assert made["seal_id"] == 1
    assert conn.execute("select max(seal_id) from auditdb.seal").fetchone() == (2,)


def test_a_crafted_manifest_is_could_not_check_not_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    out.write_text("Timestamp\n")
    good = {"format": "auditdb-export-manifest-1", "rows": 0, "bytes": 10, "sha256": "x", "export_format": "csv"}
    for bad in (
        {**good, "sealed": {"seal_id": 1}},
        {
            **good,
            "sealed": {
                "seal_id": 1,
                "upto_id": 1,
                "seal_sha256": "x",
                "entries_sealed": "many",
                "entries_not_sealed": 0,
            },
        },
        {**good, "rows": True},
    ):
        Path(f"{out}.manifest.json").write_text(json.dumps(bad))
        result = _invoke("verify-export", str(out))
        assert result.exit_code == 3 and result.output.startswith("Error: could not verify the export"), result.output
    Path(f"{out}.manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    result = _invoke("verify-export", str(out))
    assert result.exit_code == 3 and "is not an auditdb export manifest (not JSON" in result.output, result.output


def test_a_crafted_checkpoint_is_could_not_check(tmp_path: Path) -> None:
    public = tmp_path / "op.pem"
    generate_key(public)
    crafted = tmp_path / "checkpoint.json"
    for text in ("[" * 100_000 + "]" * 100_000, json.dumps({"format": "auditdb-checkpoint-1", "seal_id": "1"})):
        crafted.write_text(text)
        result = _invoke("verify", "--checkpoint", str(crafted), "--public-key", f"{public}.pub")
        assert result.exit_code == 3 and "is not an auditdb checkpoint" in result.output, result.output


@pytest.mark.usefixtures("hostile")
def test_export_refuses_a_manifest_that_would_destroy_a_file(dsn: str, tmp_path: Path) -> None:
    """Refused before anything is exported: the export itself, the key, a directory, another file."""
    key = tmp_path / "op.pem"
    generate_key(key)
    out = tmp_path / "a.csv"
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    for manifest, why in (
        (str(out), "the export's or the key's own file"),
        (str(key), "the export's or the key's own file"),
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "missing" / "m.json"), "no directory"),
        (str(other), "exists and is not an export manifest"),
        ("", "an empty path"),
    ):
        result = _invoke("--dsn", dsn, "export", "-o", str(out), "--key", str(key), "--manifest", manifest)
        assert result.exit_code == 2 and why in result.output, (manifest, result.output)
        assert not out.exists()
    assert other.read_text() == "mine" and key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    signing_to_nowhere = _invoke("--dsn", dsn, "export", "-o", "-", "--key", str(key))
    assert signing_to_nowhere.exit_code == 2 and "standard output gets none" in signing_to_nowhere.output
    both = _invoke("--dsn", dsn, "export", "-o", "-", "--manifest", "-")
    assert both.exit_code == 2 and "already goes to standard output" in both.output


@pytest.mark.usefixtures("hostile")
def test_a_manifest_on_standard_output(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    result = CliRunner().invoke(cli, ["--dsn", dsn, "export", "-o", str(out), "--manifest", "-"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["rows"] == 8 and manifest["file"] == "a.csv"
    assert not Path(f"{out}.manifest.json").exists() and not (tmp_path / "-").exists()


def test_verify_export_says_which_file_it_cannot_read(tmp_path: Path) -> None:
    empty = _invoke("verify-export", "")
    assert empty.exit_code == 2 and "an empty path" in empty.output
    missing = _invoke("verify-export", str(tmp_path / "nothere.csv"))
    assert missing.exit_code == 3 and "nothere.csv: no such file" in missing.output, missing.output
    key = tmp_path / "op.pem"
    generate_key(key)
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "a.csv.manifest.json").write_text(
        json.dumps(
            {
                "format": "auditdb-export-manifest-1",
                "rows": 0,
                "bytes": 2,
                "sha256": "x",
                "export_format": "csv",
                "public_key": "x",
                "signature": "y",
            }
        )
    )
    private = _invoke("verify-export", str(tmp_path / "a.csv"), "--public-key", str(key))
    assert private.exit_code == 3 and "is not a PEM public key" in private.output, private.output

"""Sealing reads no other session's activity: the bound for later entries comes from pg_locks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql("0010", ["seal_emitters"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

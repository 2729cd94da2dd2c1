"""Cheaper entries: the log's CHECK constraints go; INSERT gets its own guard, its condition a WHEN clause.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql("0008", ["log"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

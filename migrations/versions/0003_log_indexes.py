"""The log's id index becomes BRIN; a partial index serves `history` across key changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql("0003", ["log"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

"""emit sends NOTIFY only when a worker is asleep (the wake-up lock handshake).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql("0005", ["events"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

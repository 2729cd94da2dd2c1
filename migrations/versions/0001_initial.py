"""The auditdb schema: roles, the append-only log and its partitions, context, capture, DDL watch, event queue.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    run_revision_sql(
        "0001",
        ["roles", "log", "guard", "context", "capture", "ddl", "partitions", "queue", "access", "grants", "events"],
    )


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

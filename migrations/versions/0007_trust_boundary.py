"""The trust boundary: capture runs as auditdb_capture; readers bound by login; watchers fail closed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Stored tracked-table configs move to format 3 once the current definitions are applied
(auditdb.upgrade.upgrade_configs).
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Stored configs move to format 3 after the current definitions are in place (they need
    # auditdb.type_kind): auditdb.upgrade.upgrade_configs, run by auditdb.install.finish_upgrade.
    run_revision_sql("0007", ["trust"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

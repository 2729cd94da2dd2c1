"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from auditdb.install import run_revision_sql

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Put this revision's SQL in sql/${up_revision}_<concern>.sql; never edit a released file.
    run_revision_sql(${repr(up_revision)}, ["concern"])


def downgrade() -> None:
    raise NotImplementedError("auditdb upgrades only; `auditdb uninstall --yes` removes it")

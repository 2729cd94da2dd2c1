"""Alembic migrations of the auditdb schema (version table auditdb.alembic_version)."""

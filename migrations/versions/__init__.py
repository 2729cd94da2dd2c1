"""Alembic revisions; each one runs its own frozen SQL files from auditdb.sql."""

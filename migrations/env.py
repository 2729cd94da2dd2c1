"""Alembic environment: runs auditdb's revisions on the connection auditdb.install hands over."""

from __future__ import annotations

from alembic import context

from auditdb.install import INSTALL_LOCK_SQL, SCHEMA_SQL, VERSION_TABLE, VERSION_TABLE_SCHEMA

config = context.config


def run_offline() -> None:
    context.configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_TABLE_SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute(SCHEMA_SQL)
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_TABLE_SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        # The version table lives in schema auditdb, so the schema must exist before alembic
        # looks for it; the lock keeps two concurrent installs from interleaving.
        connection.exec_driver_sql(INSTALL_LOCK_SQL)
        connection.exec_driver_sql(SCHEMA_SQL)
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

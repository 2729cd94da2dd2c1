"""Alembic environment: runs auditdb's revisions on the connection auditdb.install hands over."""

from __future__ import annotations

import psycopg
from alembic import context

from auditdb.db import SAFE_SEARCH_PATH
from auditdb.install import (
    INSTALL_LOCK_SQL,
    INSTALL_LOCK_TIMEOUT,
    SCHEMA_SQL,
    SECURED_REVISION,
    VERSION_TABLE,
    VERSION_TABLE_SCHEMA,
    definitions_marker,
    definitions_sql,
    finish_upgrade,
    installed_version,
    secure_before_revisions,
)
from auditdb.integrity import check_version_table

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
        context.execute(f"set local search_path = {SAFE_SEARCH_PATH}")
        context.execute(SCHEMA_SQL)
        context.run_migrations()
        # The current definitions follow the last revision (auditdb.install.finish_upgrade).
        context.execute("select auditdb.begin_maintenance()")
        context.execute(definitions_sql())
        context.execute(f"comment on table auditdb.alembic_version is '{definitions_marker()}'")
        context.execute("select auditdb.end_maintenance()")


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
        connection.exec_driver_sql(f"set local search_path = {SAFE_SEARCH_PATH}")
        # Waiting for an application's open transaction must end, with a message saying so.
        timeout = str(config.attributes.get("lock_timeout", INSTALL_LOCK_TIMEOUT))
        connection.exec_driver_sql("select pg_catalog.set_config('lock_timeout', %(t)s, true)", {"t": timeout})
        connection.exec_driver_sql(INSTALL_LOCK_SQL)
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        # From the catalog, before reading the version table or running anything in the schema.
        check_version_table(driver)
        before = installed_version(driver)
        notes = None
        if before is not None and before < SECURED_REVISION and config.attributes.get("to_head", True):
            # Application code could act as auditdb_owner in that release: nothing of it may run
            # now, not even the watchers that any DDL (the next statement's) fires.
            notes = secure_before_revisions(driver)
        connection.exec_driver_sql(SCHEMA_SQL)
        context.run_migrations()
        # Revisions ran: the definitions run too, whatever the database says it holds.
        finish_upgrade(driver, migrated=installed_version(driver) != before, notes=notes)


if context.is_offline_mode():
    run_offline()
else:
    run_online()

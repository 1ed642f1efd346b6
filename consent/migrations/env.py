"""Alembic environment of the consent store.

``ConsentStore.migrate()`` passes an open connection in ``config.attributes``; the
``alembic`` command line may pass ``sqlalchemy.url`` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import consent.liveness.nonces
import consent.portal.models  # noqa: F401  (their tables join Base.metadata on import)
from consent.migrations import VERSION_TABLE
from consent.models import Base

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()

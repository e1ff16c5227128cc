"""Alembic environment: the URL comes from ``workers.store.engines.migrate`` via the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from schemas.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "workers.store.engines.migrate sets sqlalchemy.url"

engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()

"""Alembic environment: the URL comes from ``workers.db.migrate`` via the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from schemas.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "workers.db.migrate sets sqlalchemy.url"

engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()

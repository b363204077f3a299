"""Alembic environment: runs against the engine marketcare hands over (or the URL)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from marketcare.ledger.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from marketcare.ledger.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    assert isinstance(engine, sa.Engine)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()

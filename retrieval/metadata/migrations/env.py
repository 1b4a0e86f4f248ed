"""Alembic environment: the library passes an open connection in `config.attributes`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

config = context.config
connection = config.attributes.get("connection")


def _run(conn) -> None:
    # render_as_batch lets later revisions alter SQLite tables by copy-and-move.
    context.configure(connection=conn, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # `alembic -x db=PATH ...` from the command line
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit(
            "pass the database with: "
            "alembic -c retrieval/metadata/migrations/alembic.ini -x db=PATH upgrade head"
        )
    with create_engine(f"sqlite:///{db}").connect() as conn:
        _run(conn)

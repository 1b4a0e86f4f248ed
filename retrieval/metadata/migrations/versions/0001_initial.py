"""Initial schema: indexed roots, files, their contents (one vector each) and the manifest.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manifest",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "roots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("added_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "contents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("embedded", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("embedded_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("root_id", sa.Integer, sa.ForeignKey("roots.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_files_content_id", "files", ["content_id"])
    op.create_index("ix_files_root_id", "files", ["root_id"])


def downgrade() -> None:
    op.drop_table("files")
    op.drop_table("contents")
    op.drop_table("roots")
    op.drop_table("manifest")

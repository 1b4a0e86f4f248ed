"""Record what filters need: camera make and model, lens and GPS position of each image, the folder of each
file relative to its indexed root; index the columns that filters use.

The EXIF columns start empty: they fill for files that change on the next ingest, or for every file with
`retrieval ingest --refresh-metadata`. The folder is known from the paths, so it is filled here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import posixpath

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 5000


def relative_folder(path: str, root: str) -> str:
    """The folder of `path` relative to `root`, "/"-separated, "" for a file at the top (the same rule as
    `retrieval.metadata.store.relative_folder`, copied: a migration must not change when the code does)."""
    folder = posixpath.dirname(path)
    root = root.rstrip("/")
    if folder == root or not folder.startswith(root + "/"):
        return ""
    return folder[len(root) + 1 :]


def upgrade() -> None:
    # Plain ADD COLUMN (no table copy): a large index upgrades in moments.
    for name, kind in (
        ("camera_make", sa.Text),
        ("camera_model", sa.Text),
        ("lens", sa.Text),
        ("gps_lat", sa.Float),
        ("gps_lon", sa.Float),
    ):
        op.add_column("contents", sa.Column(name, kind, nullable=True))
    op.add_column("files", sa.Column("folder", sa.Text, nullable=True))

    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT files.id, files.path, roots.path FROM files JOIN roots ON roots.id = files.root_id")
    )
    update = sa.text("UPDATE files SET folder = :folder WHERE id = :id")
    batch: list[dict[str, object]] = []
    for file_id, path, root in rows.fetchall():
        batch.append({"id": file_id, "folder": relative_folder(str(path), str(root))})
        if len(batch) == _BATCH:
            conn.execute(update, batch)
            batch = []
    if batch:
        conn.execute(update, batch)

    op.create_index("ix_contents_captured_at", "contents", ["captured_at"])
    op.create_index("ix_contents_format", "contents", ["format"])
    op.create_index("ix_contents_width", "contents", ["width"])
    op.create_index("ix_contents_height", "contents", ["height"])
    op.create_index("ix_contents_gps", "contents", ["gps_lat", "gps_lon"])
    op.create_index("ix_files_folder", "files", ["folder"])
    op.create_index("ix_files_mtime_ns", "files", ["mtime_ns"])


def downgrade() -> None:
    for name in ("ix_files_mtime_ns", "ix_files_folder"):
        op.drop_index(name, "files")
    for name in ("ix_contents_gps", "ix_contents_height", "ix_contents_width", "ix_contents_format"):
        op.drop_index(name, "contents")
    op.drop_index("ix_contents_captured_at", "contents")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("folder")
    with op.batch_alter_table("contents") as batch:
        for name in ("gps_lon", "gps_lat", "lens", "camera_model", "camera_make"):
            batch.drop_column(name)

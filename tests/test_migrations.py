"""The schema exists only through Alembic; old databases are upgraded in place, new ones refused."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from retrieval.errors import IndexCorruptError, SchemaTooNewError
from retrieval.metadata.store import HEAD_REVISION, MetadataStore, _alembic_config, head_revision


def tables(path) -> set[str]:
    return set(inspect(create_engine(f"sqlite:///{path}")).get_table_names())


def test_an_empty_database_is_migrated_to_head(tmp_path):
    db = tmp_path / "meta.sqlite"
    with MetadataStore(db) as meta:
        assert meta.revision == head_revision()
    assert {"files", "contents", "roots", "manifest", "failures", "alembic_version"} <= tables(db)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_previous_revision_is_upgraded_in_place_keeping_its_rows(tmp_path):
    db = tmp_path / "meta.sqlite"
    engine = create_engine(f"sqlite:///{db}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("INSERT INTO roots (id, path, added_at) VALUES (1, '/p', '2026-01-01')")
        conn.exec_driver_sql(
            "INSERT INTO contents (id, hash, width, height, format, embedded) "
            "VALUES (7, 'abc', 10, 20, 'JPEG', 1)"
        )
        conn.exec_driver_sql(
            "INSERT INTO files (root_id, path, content_id, size, mtime_ns) VALUES (1, '/p/a.jpg', 7, 5, 6)"
        )
    engine.dispose()
    assert "failures" not in tables(db)
    with MetadataStore(db) as meta:
        assert meta.revision == head_revision()
        assert meta.content_id_for_path("/p/a.jpg") == 7
        rec = meta.records([7])[7]
        assert (rec.width, rec.height, rec.captured_at) == (10, 20, None)
    assert "failures" in tables(db)


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    db = tmp_path / "meta.sqlite"
    MetadataStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaTooNewError, match="upgrade retrieval"):
        MetadataStore(db)


def test_a_garbled_database_is_reported_as_corrupt(tmp_path):
    db = tmp_path / "meta.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexCorruptError, match="damaged"):
        MetadataStore(db)


def test_the_revision_a_database_opens_at_without_alembic_is_alembics_head():
    assert head_revision() == HEAD_REVISION

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


def test_an_index_at_revision_0002_upgrades_keeping_its_rows_and_gains_filterable_folders(tmp_path):
    from retrieval.metadata.filters import Filter

    db = tmp_path / "meta.sqlite"
    engine = create_engine(f"sqlite:///{db}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.exec_driver_sql("INSERT INTO roots (id, path, added_at) VALUES (1, '/p', '2026-01-01')")
        for content_id, captured in ((7, "'2023-07-01 10:00:00.000000'"), (8, "NULL")):
            conn.exec_driver_sql(
                "INSERT INTO contents (id, hash, width, height, format, embedded, captured_at) "
                f"VALUES ({content_id}, 'h{content_id}', 10, 20, 'JPEG', 1, {captured})"
            )
        conn.exec_driver_sql(
            "INSERT INTO files (root_id, path, content_id, size, mtime_ns) VALUES "
            "(1, '/p/Holidays/2023/a.jpg', 7, 5, 6), (1, '/p/b.jpg', 8, 5, 6)"
        )
    engine.dispose()
    with MetadataStore(db) as meta:
        assert meta.revision == head_revision() == "0003"
        rec = meta.records([7])[7]
        assert (rec.path, rec.width, rec.height, str(rec.captured_at)) == (
            "/p/Holidays/2023/a.jpg",
            10,
            20,
            "2023-07-01 10:00:00",
        )
        assert meta.allowed_ids(Filter(folders=("Holidays",))).tolist() == [7]
        assert meta.allowed_ids(Filter(formats=("JPEG",))).tolist() == [7, 8]
        assert meta.allowed_ids(Filter(camera="canon")).tolist() == []  # filled by the next ingest
    with sqlite3.connect(db) as conn:
        folders = dict(conn.execute("SELECT path, folder FROM files"))
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert folders == {"/p/Holidays/2023/a.jpg": "Holidays/2023", "/p/b.jpg": ""}
    assert {"ix_files_folder", "ix_files_mtime_ns", "ix_contents_captured_at", "ix_contents_gps"} <= indexes


def test_the_upgrade_to_0003_can_be_undone(tmp_path):
    db = tmp_path / "meta.sqlite"
    MetadataStore(db).close()
    engine = create_engine(f"sqlite:///{db}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    columns = {c["name"] for c in inspect(engine).get_columns("files")}
    engine.dispose()
    assert "folder" not in columns

"""`retrieval export`: an index to Parquet and back with pyarrow: the same ids, vectors, paths, metadata."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from retrieval_cli.main import app
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import UsageError
from retrieval.metadata import Content, File

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def index(make_photos, home) -> list[Path]:
    """Six photos, one of them also under a second name (one image, two files)."""
    paths = make_photos(6)
    shutil.copy(paths[0], paths[0].parent / "zz-copy.jpg")
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    return paths


def test_an_exported_index_reads_back_with_the_same_ids_vectors_paths_and_metadata(index, tmp_path):
    out = tmp_path / "out" / "index.parquet"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 6 images, 256-dim vectors" in result.output

    table = pq.read_table(out)
    assert table.num_rows == 6
    assert str(table.schema.field("vector").type) == "fixed_size_list<element: float>[256]"
    rows = table.to_pylist()
    with Engine() as engine:
        ids = sorted(engine.meta.embedded_ids())
        assert [r["id"] for r in rows] == ids
        exported = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(6, 256)
        np.testing.assert_array_equal(exported, engine.store.vectors(ids))
        records = engine.records(ids)
    assert [r["path"] for r in rows] == [records[i].path for i in ids]
    first = rows[0]
    assert first["path"] == str(index[0]) and first["copies"] == 2  # the first of its two paths
    assert (first["width"], first["height"], first["format"]) == (192, 144, "JPEG")
    assert first["root"] == str(index[0].parent) and first["size"] == index[0].stat().st_size
    assert first["mtime_ns"] == index[0].stat().st_mtime_ns and first["captured_at"] is None


def test_every_metadata_column_of_the_tables_is_exported(index):
    """Columns are read from the tables: one added to them later is exported with no change to export."""
    with Engine() as engine:
        names = {c.name for c in engine.meta.export_columns()}
    content = {c.name for c in Content.__table__.columns} - {"embedded"}
    files = {c.name for c in File.__table__.columns} - {"id", "root_id", "content_id"}
    assert content | files | {"root", "copies"} <= names


def test_an_export_is_written_in_row_groups(index, tmp_path):
    with Engine() as engine:
        report = engine.export(tmp_path / "small-groups.parquet", row_group=4)
    assert (report.rows, report.skipped) == (6, 0)
    assert pq.ParquetFile(tmp_path / "small-groups.parquet").metadata.num_row_groups == 2


def test_an_empty_index_exports_an_empty_table_with_its_columns(tmp_path, home):
    (tmp_path / "empty").mkdir()
    with Engine(model="classic") as engine:
        engine.ingest(tmp_path / "empty")
        report = engine.export(tmp_path / "empty.parquet")
    table = pq.read_table(tmp_path / "empty.parquet")
    assert report.rows == table.num_rows == 0
    assert {"id", "path", "vector"} <= set(table.column_names)


@pytest.mark.parametrize(
    ("where", "words"),
    [("missing/x.parquet", "does not exist"), (".", "it is a folder")],
)
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(index, tmp_path, where, words):
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / where)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "cannot write" in result.output and words in result.output


def test_a_failed_export_leaves_the_previous_file_and_no_partial_one(index, tmp_path, monkeypatch):
    out = tmp_path / "index.parquet"
    out.write_bytes(b"previous")
    with Engine() as engine:
        engine.store  # noqa: B018 - loaded, then made to fail half-way

        def fail(_ids: object) -> np.ndarray:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(engine.store, "vectors", fail)
        with pytest.raises(UsageError, match="No space left on device"):
            engine.export(out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_without_pyarrow_export_says_which_extra_to_install(index, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "pip install 'retrieval[export]'" in result.output


def test_exporting_an_index_that_does_not_exist_is_one_line(tmp_path, home):
    result = CliRunner().invoke(app, ["export", "nothing", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 4 and "no index named 'nothing'" in result.output
    assert not (tmp_path / "x.parquet").exists()


def test_rows_whose_vector_an_ingest_removed_meanwhile_are_left_out_and_counted(index, tmp_path, monkeypatch):
    with Engine() as engine:
        rows = engine.meta.export_rows

        def with_a_removed_image(chunk: int = 10_000):
            for part in rows(chunk):
                yield [*part, {**part[0], "id": 999}]  # in the database's snapshot, gone from the store

        monkeypatch.setattr(engine.meta, "export_rows", with_a_removed_image)
        report = engine.export(tmp_path / "x.parquet")
    assert (report.rows, report.skipped) == (6, 1)
    assert 999 not in pq.read_table(tmp_path / "x.parquet").column("id").to_pylist()

"""The same engine-level searches over both vector stores: the default hnswlib store and Milvus Lite.

The Milvus cases need the `milvus` extra (`pip install -e ".[milvus]"`, which `make test` and CI install);
without it they are skipped, and the tests of the clear errors still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import draw_photo
from fastapi.testclient import TestClient
from PIL import Image
from retrieval_cli.main import app
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import IndexCorruptError, IndexMismatchError, StoreUnavailableError, UsageError
from retrieval.serve.app import create_app
from retrieval.settings import MILVUS_URI_ENV
from retrieval.vectors import StoreSpec

runner = CliRunner()


def _needs_milvus() -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")


@pytest.fixture(params=["hnswlib", "milvus"])
def store(request: pytest.FixtureRequest) -> str:
    """The `--store` of a new index; the milvus case runs on Milvus Lite inside the index folder."""
    if request.param == "milvus":
        _needs_milvus()
    return request.param


def test_resized_copy_finds_its_original_at_rank_1(store, make_photos, tmp_path):
    paths = make_photos(12)
    with Engine(model="classic", store=store) as engine:
        report = engine.ingest(paths[0].parent)
        assert (report.embedded, len(engine.store)) == (12, 12)
        for original in paths[::4]:
            query = tmp_path / f"q-{original.stem}.jpg"
            with Image.open(original) as im:
                im.resize((im.width // 2, im.height // 2)).save(query, quality=55)
            hits = engine.search_image(query, k=3)
            assert hits[0].path == str(original) and hits[0].score > hits[1].score
            assert 0.5 < hits[0].score <= 1.01  # a cosine (Milvus Lite's from 8-bit codes), not a distance


def test_text_search_returns_every_image_of_a_tiny_clip_index(store, make_photos):
    paths = make_photos(4)
    random_weights = pytest.warns(UserWarning, match="random")
    with random_weights, Engine(model="clip:tiny-test", pretrained=None, store=store) as engine:
        engine.ingest(paths[0].parent)
        hits = engine.search_text("a red square", k=4)
        assert sorted(h.path for h in hits) == sorted(map(str, paths))
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_similar_reads_the_stored_vector_and_leaves_the_image_out(store, make_photos):
    paths = make_photos(6)
    with Engine(model="classic", store=store) as engine:
        engine.ingest(paths[0].parent)
        the_id = engine.meta.content_id_for_path(paths[3])
        assert np.allclose(np.linalg.norm(engine.store.vectors([the_id])), 1.0, atol=1e-4)
        hits = engine.similar(paths[3], k=5)
        assert the_id not in {h.id for h in hits} and len(hits) == 5
        assert [h.id for h in hits] == [h.id for h in engine.similar(the_id, k=5)]


def test_removed_files_lose_their_vectors(store, make_photos):
    paths = make_photos(4)
    with Engine(model="classic", store=store) as engine:
        engine.ingest(paths[0].parent)
        gone = engine.meta.content_id_for_path(paths[0])
        assert engine.remove([paths[0]]).removed == [str(paths[0])]
        assert gone not in engine.store and len(engine.store) == 3
        assert paths[0].exists()
        assert str(paths[0]) not in {h.path for h in engine.search_image(paths[0], k=4)}


def test_reingest_picks_up_new_changed_and_deleted_files(store, make_photos):
    paths = make_photos(5)
    folder = paths[0].parent
    with Engine(model="classic", store=store) as engine:
        engine.ingest(folder)
        old_id = engine.meta.content_id_for_path(paths[1])
        deleted_id = engine.meta.content_id_for_path(paths[2])
        make_photos(1, start=100)  # new
        draw_photo(777).save(paths[1], "JPEG")  # changed in place
        os.utime(paths[1], ns=(1, 1))
        paths[2].unlink()  # deleted
        report = engine.ingest(folder)
        assert (report.added, report.updated, report.removed, report.embedded) == (1, 1, 1, 2)
        assert old_id not in engine.store and deleted_id not in engine.store
        new_id = engine.meta.content_id_for_path(paths[1])
        assert new_id in engine.store
        assert sorted(engine.store.ids().tolist()) == sorted(engine.meta.embedded_ids())
        assert engine.search_image(paths[1], k=1)[0].id == new_id
        again = engine.ingest(folder)
        assert (again.unchanged, again.embedded) == (5, 0)


def test_reopened_index_keeps_its_store_and_answers_the_same(store, make_photos):
    paths = make_photos(6)
    with Engine("kept", model="classic", store=store) as engine:
        engine.ingest(paths[0].parent)
        before = [(h.id, round(h.score, 4)) for h in engine.search_image(paths[2], k=6)]
        kind = engine.manifest["store"]
    assert kind == {"hnswlib": "hnswlib-int8", "milvus": "milvus"}[store]
    with Engine("kept") as engine:
        assert [(h.id, round(h.score, 4)) for h in engine.search_image(paths[2], k=6)] == before
        assert engine.stats().vectors == 6 and engine.doctor().ok


def test_doctor_drops_a_vector_left_without_a_row(store, make_photos):
    paths = make_photos(3)
    with Engine(model="classic", store=store) as engine:
        engine.ingest(paths[0].parent)
        writable = engine._open_for_writing()
        writable.add(np.array([999]), writable.vectors([engine.meta.content_id_for_path(paths[0])]))
        writable.save()
        report = engine.doctor()
        assert report.vectors_without_row == 1 and not report.ok
        assert engine.doctor(fix=True).fixed
        assert engine.doctor().ok and 999 not in engine.store


def test_the_server_searches_either_store(store, make_photos, home):
    paths = make_photos(5)
    with Engine("served", model="classic", store=store) as engine:
        engine.ingest(paths[0].parent)
        the_id = engine.meta.content_id_for_path(paths[1])
        with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:
            hits = client.get(f"/api/similar/{the_id}", params={"k": 4}).json()["results"]
            assert len(hits) == 4 and the_id not in {h["id"] for h in hits}
            assert client.get("/api/stats").status_code == 200


# ---- choosing the store, and its errors ---------------------------------------------------------


def test_cli_creates_a_milvus_index_and_refuses_another_store_for_it(make_photos, home):
    _needs_milvus()
    paths = make_photos(4)
    result = runner.invoke(app, ["ingest", str(paths[0].parent), "--model", "classic", "--store", "milvus"])
    assert result.exit_code == 0, result.output
    assert (home / "default" / "vectors" / "milvus.db").is_dir()
    result = runner.invoke(app, ["search", "--image", str(paths[1]), "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["path"] == str(paths[1])
    result = runner.invoke(app, ["ingest", str(paths[0].parent), "--store", "hnswlib"])
    assert result.exit_code == IndexMismatchError.exit_code
    assert "milvus store, not hnswlib-int8" in result.output and "drop --store" in result.output


def test_a_missing_milvus_extra_is_one_clear_line_and_records_nothing(make_photos, monkeypatch):
    paths = make_photos(2)
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # `import pymilvus` now raises ImportError
    with Engine(model="classic", store="milvus") as engine, pytest.raises(UsageError) as caught:
        engine.ingest(paths[0].parent)
    assert "pip install 'retrieval[milvus]'" in str(caught.value) and "\n" not in str(caught.value)
    with Engine(model="classic") as engine:  # the index was not left half-made as a Milvus index
        engine.ingest(paths[0].parent)
        assert engine.manifest["store"] == "hnswlib-int8" and len(engine.store) == 2


def test_an_unreachable_milvus_server_is_one_clear_line(make_photos, monkeypatch):
    pytest.importorskip("pymilvus")
    import retrieval.vectors.milvus as milvus_store

    monkeypatch.setattr(milvus_store, "CONNECT_TIMEOUT", 1.0)
    paths = make_photos(1)
    unreachable = pytest.raises(StoreUnavailableError, match=r"cannot reach Milvus at http://127\.0\.0\.1:9")
    with Engine(model="classic", milvus_uri="http://127.0.0.1:9") as engine, unreachable:
        engine.ingest(paths[0].parent)
    with Engine(model="classic") as engine:  # nothing recorded: the index can still be made another way
        engine.ingest(paths[0].parent)
        assert engine.manifest["store"] == "hnswlib-int8" and len(engine.store) == 1


def test_an_unknown_store_is_a_usage_error_before_any_model_loads(monkeypatch):
    def no_model(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("retrieval.engine.create_embedder", no_model)
    with pytest.raises(UsageError, match="unknown store 'faiss'"):
        Engine(model="classic", store="faiss")


@pytest.mark.slow
def test_milvus_lite_open_in_another_process_is_index_busy(make_photos, home):
    _needs_milvus()
    paths = make_photos(2)
    with Engine(model="classic", store="milvus") as engine:
        engine.ingest(paths[0].parent)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from retrieval.engine import Engine; e = Engine(); e.store; "
            "print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        result = runner.invoke(app, ["search", "--image", str(paths[0])])
        assert result.exit_code == 5
        assert "open in another process" in result.output and "Milvus Lite serves one" in result.output
    finally:
        holder.communicate("", timeout=60)


@pytest.mark.slow
def test_the_default_store_never_imports_pymilvus(make_photos, home):
    folder = make_photos(2)[0].parent
    code = (
        "import sys; from retrieval.engine import Engine\n"
        f"with Engine(model='classic') as e: e.ingest({str(folder)!r}); e.search_image({str(folder)!r} + "
        "'/photo000.jpg')\n"
        "print(sorted(m for m in sys.modules if 'milvus' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_store_spec_of_a_new_index():
    assert StoreSpec.for_new_index("x", None, None) == StoreSpec("hnswlib-int8")
    assert StoreSpec.for_new_index("x", "hnswlib", None).to_manifest() == {"store": "hnswlib-int8"}
    lite = StoreSpec.for_new_index("my.photos-2", "milvus", None)
    assert lite.milvus_uri is None and lite.milvus_collection.startswith("retrieval_my_photos_2_")
    assert StoreSpec.for_new_index("x", None, "http://h:19530").kind == "milvus"  # a URI alone means Milvus
    with pytest.raises(UsageError, match="unknown store 'faiss'"):
        StoreSpec.for_new_index("x", "faiss", None)
    with pytest.raises(UsageError, match="--milvus-uri goes with --store milvus"):
        StoreSpec.for_new_index("x", "hnswlib", "http://h:19530")


def test_milvus_uri_from_the_environment_applies_to_new_milvus_indexes_only(monkeypatch):
    monkeypatch.setenv(MILVUS_URI_ENV, "http://cluster:19530")
    assert StoreSpec.for_new_index("x", "milvus", None).milvus_uri == "http://cluster:19530"
    assert StoreSpec.for_new_index("x", None, None).kind == "hnswlib-int8"


def test_an_existing_index_refuses_another_store_or_uri():
    spec = StoreSpec("milvus", None, "retrieval_x_00000000")
    spec.check_request("x", "milvus", None)
    with pytest.raises(IndexMismatchError, match="Milvus Lite inside the index folder, not at http://h:1"):
        spec.check_request("x", None, "http://h:1")
    with pytest.raises(IndexMismatchError, match="drop --store"):
        StoreSpec("hnswlib-int8").check_request("x", "milvus", None)
    with pytest.raises(UsageError, match="upgrade retrieval"):
        StoreSpec.from_manifest({"store": "qdrant"})
    assert StoreSpec.from_manifest({}) == StoreSpec("hnswlib-int8")  # indexes from before the choice


def test_an_emptied_database_is_refused_whichever_store_holds_the_vectors(store, make_photos, home):
    photos = make_photos(3)
    with Engine(model="classic", store=store) as engine:
        engine.ingest(photos[0].parent)
    (home / "default" / "meta.sqlite").write_bytes(b"")
    with pytest.raises(IndexCorruptError, match="is empty but the index has vectors"):
        Engine()

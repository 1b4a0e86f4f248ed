"""One contract for every vector store: the default hnswlib store, Milvus Lite and a real Milvus server.

The Milvus cases need the `milvus` extra (`pip install -e ".[milvus]"`) and, for the server, the
`milvus-server` extra (the PyPI `milvus` package, started once per session by the `milvus_server` fixture);
`make test` and CI install both. Without them those cases are skipped, and the tests of the clear errors
still run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from retrieval_cli.main import app
from support.photos import draw_photo
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


@pytest.fixture(params=["hnswlib", "milvus", "milvus-server"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `--store` of a new index: the default store, Milvus Lite inside the index folder, or the
    session's Milvus server (named by $RETRIEVAL_MILVUS_URI, as a user would)."""
    if request.param == "hnswlib":
        return "hnswlib"
    _needs_milvus()
    if request.param == "milvus-server":
        monkeypatch.setenv(MILVUS_URI_ENV, request.getfixturevalue("milvus_server"))
    return "milvus"


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
            assert 0.5 < hits[0].score <= 1 + 1e-6  # an exact cosine, not a distance nor an 8-bit estimate


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

    monkeypatch.setattr("retrieval.embedders.create_embedder", no_model)
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


# ---- the store contract, on every store -----------------------------------------------------------


@pytest.fixture(params=["hnswlib", "milvus-lite", "milvus-server"])
def new_store(request, tmp_path):
    """A function making an empty store of a given dim, open for writing, in each implementation."""
    from retrieval.vectors import create_store

    spec = StoreSpec("hnswlib-int8")
    if request.param != "hnswlib":
        _needs_milvus()
        uri = request.getfixturevalue("milvus_server") if request.param == "milvus-server" else None
        spec = StoreSpec("milvus", uri, f"contract_{secrets.token_hex(4)}")
    made = []

    def make(dim: int, folder_name: str = "vectors"):
        made.append(create_store(spec, tmp_path / folder_name, dim))
        return made[-1]

    yield make
    for store in made:
        store.close()


def _near_copies(n_groups: int, per_group: int, dim: int, eps: float, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight groups: each a base vector nudged by `eps` (cosines ~1 - eps²/2 within a
    group, too close for 8-bit codes to tell apart, as a photo and the photo with a few pixels changed)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_groups, dim))
    vecs = np.repeat(base / np.linalg.norm(base, axis=1, keepdims=True), per_group, axis=0)
    vecs = vecs + eps * rng.standard_normal(vecs.shape)
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def test_every_store_scores_exactly_and_finds_each_vector_first_among_its_near_copies(new_store):
    dim = 64
    vecs = _near_copies(n_groups=40, per_group=5, dim=dim, eps=2e-3)
    ids = np.arange(1, len(vecs) + 1, dtype=np.int64) * 10
    store = new_store(dim)
    store.add(ids, vecs)
    store.save()
    found, scores = store.search(vecs, k=5)  # read right after the writer's own write: it sees them
    assert (found[:, 0] == ids).all()  # each is its own first hit, though its near copies score ~0.99999
    assert (scores <= 1 + 1e-6).all() and (scores[:, 0] >= 1 - 1e-5).all()
    exact = np.einsum("ij,ikj->ik", vecs, vecs[(found // 10 - 1)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # true cosines, not distances from 8-bit codes
    assert set(found[0].tolist()) == set(ids[:5].tolist())  # the whole group, best first
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_every_store_replaces_a_vector_added_again_and_removes_it(new_store):
    store = new_store(8)
    vecs = _near_copies(3, 1, 8, 0.0)
    store.add(np.array([1, 2, 3]), vecs)
    store.add(np.array([2]), vecs[[0]])  # replaced: id 2 now holds vector 1
    store.save()
    assert len(store) == 3 and sorted(store.ids().tolist()) == [1, 2, 3]
    np.testing.assert_allclose(store.vectors([2]), vecs[[0]], atol=1e-6)
    assert store.ids_above(1).tolist() == [2, 3]
    assert store.remove([3, 99]) == 1 and 3 not in store and len(store) == 2


def test_every_store_answers_a_filtered_search_from_the_allowed_ids_only(new_store):
    dim = 32
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((300, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, 301, dtype=np.int64)
    store = new_store(dim)
    store.add(ids, vecs)
    store.save()
    allowed = np.array([5, 17, 40, 41, 99, 150, 151, 299, 1000], dtype=np.int64)  # 1000 is not stored
    queries = vecs[[4, 120, 250]]
    found, scores = store.search(queries, k=5, allowed=allowed)
    stored = allowed[allowed <= 300]
    exact = queries @ vecs[stored - 1].T
    best = np.argsort(-exact, axis=1)[:, :5]
    assert (found == stored[best]).all()  # the exact top-5 among the allowed, best first
    np.testing.assert_allclose(scores, np.take_along_axis(exact, best, axis=1), atol=1e-5)
    few, few_scores = store.search(queries[0], k=4, allowed=np.array([17, 40, 1000]))
    assert few[0, :2].tolist() == sorted([17, 40], key=lambda i: -float(vecs[i - 1] @ queries[0]))
    assert few[0, 2:].tolist() == [-1, -1] and np.isneginf(few_scores[0, 2:]).all()
    nothing, _ = store.search(queries, k=3, allowed=np.array([], dtype=np.int64))
    assert (nothing == -1).all()


#: How each store is made to take each of its filtered ways: Milvus's expression limits (terms per
#: expression, expressions per search) and the default store's way.
FILTER_PLANS = {
    "one-expression": ((4096, 4), "exact"),
    "chunked": ((32, 100), "scan"),
    "widened": ((8, 0), "post"),
}


@pytest.mark.parametrize("plan", list(FILTER_PLANS))
@pytest.mark.parametrize("complement", [False, True], ids=["folder-and-singles", "all-but-a-few"])
def test_every_store_answers_a_filtered_search_exactly_whichever_way_it_takes(
    new_store, monkeypatch, plan, complement
):
    from retrieval.vectors import milvus
    from retrieval.vectors.hnsw import filtered

    (terms, exprs), way = FILTER_PLANS[plan]
    monkeypatch.setattr(milvus, "FILTER_TERMS", terms)
    monkeypatch.setattr(milvus, "FILTER_EXPRS", exprs)
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: way)
    dim, n = 32, 600
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    store = new_store(dim)
    store.add(ids, vecs)
    store.remove([150])
    store.save()
    if complement:
        allowed = np.setdiff1d(ids, rng.choice(ids, 20, replace=False))
    else:  # a folder (ids 100..199) and scattered singles, with ids never stored
        allowed = np.union1d(np.arange(100, 200), rng.choice(ids, 150, replace=False))
    allowed = np.union1d(allowed, [n + 1, n + 2])
    queries = vecs[[0, 77, 300, 451, 599]]
    found, scores = store.search(queries, k=8, allowed=allowed)
    live = allowed[(allowed <= n) & (allowed != 150)]
    exact = queries @ vecs[live - 1].T
    best = np.argsort(-exact, axis=1)[:, :8]
    assert np.isin(found, live).all()  # allowed, stored and not removed
    assert (found[:, 0] == live[best[:, 0]]).all()
    hits = [len(set(f) & set(t)) for f, t in zip(found.tolist(), live[best].tolist(), strict=True)]
    assert sum(hits) >= 0.95 * found.size
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", queries, vecs[found - 1]), atol=1e-5)


def test_duplicates_are_the_same_groups_on_every_store(store, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    for seed in range(6):  # six photos, each with a copy a pixel or a brightness step away
        img = draw_photo(seed)
        img.save(folder / f"p{seed}.png")
        near = np.asarray(img).astype(np.int16)
        near[0, 0] = 255 - near[0, 0] if seed % 2 else near[0, 0]
        near = np.clip(near + (seed % 2 == 0), 0, 255).astype(np.uint8)
        Image.fromarray(near).save(folder / f"p{seed}-near.png")
    with Engine(model="classic", store=store) as engine:
        engine.ingest(folder)
        report = engine.duplicates(threshold=0.99)
        groups = sorted(sorted(p for m in g.members for p in m.paths) for g in report.groups)
        assert all(g.weakest <= 1 + 1e-6 for g in report.groups)
    assert groups == sorted(
        sorted([str(folder / f"p{s}.png"), str(folder / f"p{s}-near.png")]) for s in range(6)
    )


# ---- a real Milvus server: consistency, crashes, repairs, owners, credentials ----------------------


@pytest.fixture
def server_env(milvus_server, monkeypatch):
    _needs_milvus()
    monkeypatch.setenv(MILVUS_URI_ENV, milvus_server)
    return milvus_server


def test_a_milvus_server_index_is_bounded_prefers_hnsw_and_keeps_no_credentials(
    server_env, make_photos, home
):
    paths = make_photos(3)
    token_uri = server_env.replace("http://", "http://alice:s3cret-passw0rd@")
    with Engine(model="classic", milvus_uri=token_uri) as engine:
        engine.ingest(paths[0].parent)
        assert engine.manifest["milvus_uri"] == server_env  # the user part is gone from the manifest
        st = engine.stats().store
        assert st["index"] == "HNSW"  # Milvus 2.3 refuses HNSW_SQ; HNSW, not IVF_SQ8, is next
        assert "s3cret" not in json.dumps(st, default=str)
        from pymilvus import MilvusClient

        described = MilvusClient(uri=server_env).describe_collection(engine.manifest["milvus_collection"])
        assert described["consistency_level"] in (2, "Bounded")
    assert "s3cret" not in (home / "default" / "meta.sqlite").read_bytes().decode("latin-1")
    assert "s3cret" not in "".join(p.read_text() for p in (home / "default" / "vectors").glob("*.json"))


def test_a_search_right_after_an_ingest_in_another_engine_sees_the_new_vectors(server_env, make_photos):
    paths = make_photos(4)
    with Engine(model="classic", store="milvus") as engine:
        engine.ingest(paths[0].parent)
    make_photos(2, start=50)
    with Engine() as writer:
        writer.ingest(paths[0].parent)
    with Engine() as reader:  # a fresh reader, at once: Strong until Bounded has caught up
        new = reader.meta.content_id_for_path(paths[0].parent / "photo050.jpg")
        assert reader.search_image(paths[0].parent / "photo050.jpg", k=1)[0].id == new
        assert reader.stats().vectors == 6


def test_an_interrupted_ingest_on_a_server_is_repaired_when_reopened(server_env, make_photos):
    paths = make_photos(3)
    with Engine(model="classic", store="milvus") as engine:
        engine.ingest(paths[0].parent)
        writer = engine._open_for_writing()
        vec = writer.vectors([engine.meta.content_id_for_path(paths[0])])
        writer.add(np.array([1000, 1001]), np.repeat(vec, 2, axis=0))  # vectors whose rows never commit
    # no save, no commit: as a writer killed mid-batch
    with Engine() as engine:
        engine._open_for_writing()  # the repair looks above the last committed id
        assert 1000 not in engine.store and 1001 not in engine.store and len(engine.store) == 3
        assert engine.doctor().ok


def test_doctor_fix_on_a_server_drops_a_vector_below_the_last_id(server_env, make_photos):
    paths = make_photos(3)
    with Engine(model="classic", store="milvus") as engine:
        engine.ingest(paths[0].parent)
        gone = engine.meta.content_id_for_path(paths[1])
        writable = engine._open_for_writing()
        with engine.meta.session() as s:  # a row lost: its vector stays, below the last id
            engine.meta.mark_not_embedded(s, [gone])
        report = engine.doctor()
        assert report.vectors_without_row == 1 and not report.ok
        assert writable is engine.store and engine.doctor(fix=True).fixed and engine.doctor().ok
        assert gone not in engine.store


def test_a_copied_index_folder_cannot_write_to_the_original_collection(server_env, make_photos, home):
    import shutil

    paths = make_photos(3)
    with Engine("original", model="classic", store="milvus") as engine:
        engine.ingest(paths[0].parent)
    shutil.copytree(home / "original", home / "copy")
    with Engine("copy") as copy:
        assert copy.search_image(paths[0], k=1)[0].path == str(paths[0])  # reading is fine
        with pytest.raises(IndexMismatchError, match="is a copy of the index in") as caught:
            copy.ingest(paths[0].parent)
        assert "\n" not in str(caught.value)
    with Engine("original") as engine:
        assert len(engine.store) == 3 and engine.ingest(paths[0].parent).unchanged == 3


def test_stats_show_the_local_part_when_the_server_is_down(make_photos, home, monkeypatch):
    _needs_milvus()
    import retrieval.vectors.milvus as milvus_store

    monkeypatch.setattr(milvus_store, "CONNECT_TIMEOUT", 1.0)
    paths = make_photos(2)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    manifest_uri = "http://bob:hunter2-long-password@127.0.0.1:9"
    with Engine() as engine, engine.meta.session() as s:
        engine.meta.set_manifest(s, store="milvus", milvus_uri=manifest_uri, milvus_collection="gone")
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 0, result.output
    assert "unknown vectors" in result.output and "vectors    unknown: cannot reach Milvus" in result.output
    result = runner.invoke(app, ["stats", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["vectors"] is None
    assert "hunter2" not in result.output

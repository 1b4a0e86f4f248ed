"""Tests of the quantizer and the quantized vector store (small synthetic data, a few seconds in all)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import IndexCorruptError, IndexNotFoundError, UsageError
from retrieval.vectors.hnsw import filtered
from retrieval.vectors.hnsw import quantizer as quantizer_module
from retrieval.vectors.hnsw.quantizer import Quantizer
from retrieval.vectors.hnsw.store import LOW_HEAD_BOOST, MANIFEST, StoreParams, VectorStore

DIM = 64
SMALL = StoreParams(graph_dims=16, m=12, ef_construction=64, ef_search=64, rescore=16)


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Clustered, anisotropic, L2-normalised rows: closer to embeddings than isotropic noise."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1, dtype=np.float32) ** -0.6
    centres = rng.standard_normal((max(4, n // 50), dim)).astype(np.float32) * scale
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)).astype(np.float32) * scale
    basis, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((dim, dim)))
    x = (x @ basis.astype(np.float32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ base.T
    return base_ids[np.argsort(-sims, axis=1)[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "vectors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 300-vector store (generation 1) for tests that only damage or copy files."""
    path = tmp_path_factory.mktemp("saved") / "vectors"
    make_store(path, 300)[0].save()
    return path


def make_store(
    folder: Path, n: int, *, params: StoreParams = SMALL, seed: int = 0
) -> tuple[VectorStore, np.ndarray]:
    store = VectorStore.create(folder, DIM, params)
    vecs = unit_vectors(n, seed=seed)
    store.add(np.arange(n) * 10 + 5, vecs)  # ids with gaps, like SQLite row ids after deletes
    return store, vecs


# ---- quantizer -------------------------------------------------------------------------------


def test_quantizer_scores_are_close_to_exact_inner_products() -> None:
    x = unit_vectors(2000)
    quantizer = Quantizer.fit(x, graph_dims=16)
    head, codes = quantizer.encode(x)
    assert head.shape == (2000, 16) and codes.shape == (2000, DIM - 15) and codes.dtype == np.int8
    q = unit_vectors(5, seed=1)
    q_graph, weights, bias = quantizer.prepare_queries(q)
    approx = q_graph @ head.T + weights @ codes.T.astype(np.float32) + bias[:, None]
    assert np.abs(approx - q @ x.T).max() < 0.01
    assert np.abs(quantizer.decode(head, codes) - x).max() < 0.01


def test_graph_vectors_are_completed_to_unit_length() -> None:
    x = unit_vectors(500)
    quantizer = Quantizer.fit(x, graph_dims=16)
    graph, _ = quantizer.encode(x)
    np.testing.assert_allclose(np.linalg.norm(graph, axis=1), 1.0, atol=1e-4)
    q_graph, _, _ = quantizer.prepare_queries(unit_vectors(3, seed=2))
    assert q_graph.shape == (3, 16) and np.all(q_graph[:, -1] == 0)


def test_quantizer_head_holds_most_energy_first() -> None:
    quantizer = Quantizer.fit(unit_vectors(1000), graph_dims=8)
    assert np.all(np.diff(quantizer.energy) <= 1e-9)
    assert 0.3 < quantizer.head_energy() < 1.0


def test_quantizer_survives_its_arrays() -> None:
    x = unit_vectors(300)
    quantizer = Quantizer.fit(x, graph_dims=16)
    again = Quantizer.from_arrays(quantizer.to_arrays())
    for a, b in zip(quantizer.encode(x), again.encode(x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_quantizer_without_tail_is_lossless() -> None:
    x = unit_vectors(50)
    quantizer = Quantizer.fit(x, graph_dims=None)
    head, codes = quantizer.encode(x)
    assert quantizer.tail_dims == 0 and codes.shape == (50, 0)
    np.testing.assert_allclose(quantizer.decode(head, codes), x, atol=1e-5)


def _topics(n: int, dim: int, *, rank: int, seed: int) -> np.ndarray:
    """Unit vectors in tight groups of ~20 (near-duplicates): group centres spread over `rank` directions,
    each member its centre plus isotropic noise over all `dim` (what tells neighbours apart)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((n // 20 + 1, dim))
    centres[:, :rank] = rng.standard_normal((len(centres), rank))
    x = centres[rng.integers(0, len(centres), n)] / np.sqrt(rank) + 0.15 * rng.standard_normal(
        (n, dim)
    ) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_an_adapted_head_grows_where_neighbours_differ_along_every_direction() -> None:
    n = quantizer_module.ADAPT_MIN_SAMPLE + quantizer_module.ADAPT_PROBES + 500
    # Groups spread over all 64 directions: 15 of them rank a group's members no better than chance.
    flat = Quantizer.fit(_topics(n, 64, rank=64, seed=0), graph_dims=16, adapt=True)
    assert flat.head_dims > 15
    assert Quantizer.fit(_topics(n, 64, rank=64, seed=0), graph_dims=16).head_dims == 15  # asked, not adapted
    # Groups over 8 directions and members close together: the 15-dim head ranks neighbours as well as all 64.
    rng = np.random.default_rng(1)
    steep = np.zeros((n, 64), dtype=np.float32)
    steep[:, :8] = rng.standard_normal((n, 8))
    steep += 0.002 * rng.standard_normal((n, 64)).astype(np.float32)
    steep /= np.linalg.norm(steep, axis=1, keepdims=True)
    assert Quantizer.fit(steep, graph_dims=16, adapt=True).head_dims == 15


def test_a_small_sample_keeps_the_head_it_asks_for() -> None:
    x = _topics(quantizer_module.ADAPT_MIN_SAMPLE // 2, 64, rank=64, seed=0)
    assert Quantizer.fit(x, graph_dims=16, adapt=True).head_dims == 15


def test_stores_adapt_their_head_by_default_and_older_parameters_read_so() -> None:
    assert StoreParams().adapt_head
    assert StoreParams.from_dict({"graph_dims": 112, "m": 12}).adapt_head


def test_quantizer_rejects_inconsistent_arrays() -> None:
    arrays = Quantizer.fit(unit_vectors(100), graph_dims=16).to_arrays()
    arrays["scale"] = arrays["scale"][:-1]
    with pytest.raises(IndexCorruptError):
        Quantizer.from_arrays(arrays)


# ---- search ----------------------------------------------------------------------------------


def test_stored_vector_is_its_own_nearest_neighbour(folder: Path) -> None:
    store, vecs = make_store(folder, 1000)
    ids, scores = store.search(vecs[[3, 500, 999]], 5)
    assert ids[:, 0].tolist() == [35, 5005, 9995]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_recall_at_10_matches_brute_force(folder: Path) -> None:
    store, vecs = make_store(folder, 3000)
    queries = unit_vectors(100, seed=7)
    found, _ = store.search(queries, 10)
    assert store.stats()["quantizer"]["tail_dims"] == DIM - 15  # the graph path, not a scan
    assert recall(found, exact_top(vecs, np.arange(3000) * 10 + 5, queries, 10)) >= 0.95


def test_higher_ef_does_not_lower_recall(folder: Path) -> None:
    store, vecs = make_store(folder, 3000)
    queries = unit_vectors(100, seed=8)
    truth = exact_top(vecs, np.arange(3000) * 10 + 5, queries, 10)
    low = recall(store.search(queries, 10, ef=10)[0], truth)
    high = recall(store.search(queries, 10, ef=400)[0], truth)
    assert high >= low and high >= 0.99


def test_query_mostly_outside_the_pca_head_gets_more_graph_candidates(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, vecs = make_store(folder, 3000)
    basis = store._live().quantizer.basis
    image_like = vecs[:1]
    text_like = basis[:, -1:].T + 0.3 * basis[:, :1].T  # energy mostly in the int8 tail's directions
    text_like /= np.linalg.norm(text_like)
    seen: list[int] = []
    real = VectorStore._graph_search

    def spy(self: VectorStore, st: object, q: np.ndarray, k: int, cands: int) -> object:
        seen.append(cands)
        return real(self, st, q, k, cands)

    monkeypatch.setattr(VectorStore, "_graph_search", spy)
    ids, _ = store.search(np.concatenate([image_like, text_like]), 10)
    assert sorted(seen) == [SMALL.ef_search, SMALL.ef_search * LOW_HEAD_BOOST]
    assert ids[0, 0] == 5  # rows come back in query order
    seen.clear()
    store.search(text_like, 10, ef=32)  # an explicit ef is taken as given
    assert seen == [32]


def test_single_query_is_answered_as_one_row(folder: Path) -> None:
    store, vecs = make_store(folder, 200)
    ids, scores = store.search(vecs[7], 3)
    assert ids.shape == (1, 3) and scores.dtype == np.float32 and ids[0, 0] == 75


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_collection_pads_results_with_minus_one(folder: Path, n: int) -> None:
    store, vecs = make_store(folder, n)
    ids, scores = store.search(vecs[0], 5)
    assert ids[0, 0] == 5 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert ids[0, n:].tolist() == [-1] * (5 - n)
    assert np.all(np.isneginf(scores[0, n:]))
    store.save()
    reopened = VectorStore.open(folder)
    assert reopened.search(vecs[0], 5)[0].tolist() == ids.tolist()


def test_store_without_int8_tail_saves_and_reopens(folder: Path) -> None:
    params = StoreParams(graph_dims=None, m=12, ef_construction=64, ef_search=64, rescore=16)
    store, vecs = make_store(folder, 300, params=params)
    assert store.stats()["quantizer"]["tail_dims"] == 0
    store.save()
    reopened = VectorStore.open(folder)
    assert reopened.search(vecs[:3], 1)[0][:, 0].tolist() == [5, 15, 25]


def test_empty_store_returns_only_padding(folder: Path) -> None:
    store = VectorStore.create(folder, DIM)
    ids, _ = store.search(unit_vectors(2), 3)
    assert ids.tolist() == [[-1] * 3] * 2
    assert len(VectorStore.open(folder)) == 0


def test_wrong_shapes_are_usage_errors(folder: Path) -> None:
    store, _ = make_store(folder, 10)
    with pytest.raises(UsageError):
        store.search(np.zeros(DIM + 1, dtype=np.float32), 3)
    with pytest.raises(UsageError):
        store.add(np.array([1, 2]), unit_vectors(3))
    with pytest.raises(UsageError):
        store.add(np.array([-4]), unit_vectors(1))


# ---- contents --------------------------------------------------------------------------------


def test_remove_and_replace(folder: Path) -> None:
    store, vecs = make_store(folder, 500)
    assert store.remove([5, 15, 123456]) == 2
    assert 5 not in store and 25 in store and len(store) == 498
    found = store.search(vecs[:2], 10)[0]
    assert 5 not in found and 15 not in found and found.min() >= 0

    other = unit_vectors(1, seed=42)
    store.add(np.array([25]), other)  # replace id 25 with another vector
    np.testing.assert_array_equal(store.vectors([25]), other)
    assert store.search(other, 1)[0][0, 0] == 25
    assert store.search(vecs[2], 1)[0][0, 0] != 25
    assert len(store) == 498

    store.save()
    reopened = VectorStore.open(folder)
    assert len(reopened) == 498 and 5 not in reopened
    np.testing.assert_array_equal(reopened.vectors([25]), other)


def test_vectors_returns_originals_and_rejects_unknown_ids(folder: Path) -> None:
    store, vecs = make_store(folder, 50)
    np.testing.assert_array_equal(store.vectors([15, 5]), vecs[[1, 0]])
    with pytest.raises(UsageError, match="7"):
        store.vectors([5, 7])
    assert store.ids().tolist() == (np.arange(50) * 10 + 5).tolist()


def test_growth_refits_the_quantizer_and_results_stay_right(folder: Path) -> None:
    store = VectorStore.create(folder, DIM, SMALL)
    vecs = unit_vectors(1200)
    store.add(np.arange(100), vecs[:100])
    assert store.stats()["quantizer"]["fitted_n"] == 100
    store.add(np.arange(100, 1200), vecs[100:])
    assert store.stats()["quantizer"]["fitted_n"] == 1200
    found, _ = store.search(vecs[[0, 50, 150, 1100]], 1)
    assert found[:, 0].tolist() == [0, 50, 150, 1100]


def test_many_removals_compact_the_originals(folder: Path) -> None:
    store, vecs = make_store(folder, 400)
    store.save()
    store.remove((np.arange(300) * 10 + 5).tolist())
    store.save()
    assert store.stats()["slots"] == 100
    reopened = VectorStore.open(folder)
    assert reopened.search(vecs[350], 1)[0][0, 0] == 3505
    np.testing.assert_array_equal(reopened.vectors([3995]), vecs[[399]])


def test_read_only_store_refuses_writes(folder: Path) -> None:
    make_store(folder, 10)[0].save()
    reader = VectorStore.open(folder)
    with pytest.raises(UsageError, match="read-only"):
        reader.add(np.array([1]), unit_vectors(1))


def test_params_survive_a_dict_and_reject_unknown_keys() -> None:
    assert StoreParams.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(UsageError):
        StoreParams.from_dict({"graph_dim": 8})
    with pytest.raises(UsageError):
        StoreParams(rescore=-1)


# ---- persistence -----------------------------------------------------------------------------


def test_saved_store_reopens_with_same_results(folder: Path) -> None:
    store, _ = make_store(folder, 800)
    queries = unit_vectors(20, seed=3)
    before = store.search(queries, 10)
    generation = store.save()
    assert generation == 1
    with VectorStore.open(folder) as reopened:
        assert reopened.generation == 1 and len(reopened) == 800 and reopened.params == SMALL
        after = reopened.search(queries, 10)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], rtol=1e-6)


def test_missing_store_and_duplicate_create_are_refused(folder: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        VectorStore.open(folder)
    VectorStore.create(folder, DIM)
    with pytest.raises(UsageError, match="already"):
        VectorStore.create(folder, DIM)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("suffix", "how"),
    [
        (".codes", "truncate"),
        (".codes", "garble"),
        (".graph", "garble"),
        (".graph", "truncate"),
        (".slots", "garble"),
        (".quantizer.npz", "garble"),
        (".f32", "truncate"),
        (MANIFEST, "garble"),
    ],
)
def test_damaged_file_is_reported_by_name(saved: Path, folder: Path, suffix: str, how: str) -> None:
    shutil.copytree(saved, folder)
    (path,) = [p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith("g00000000")]
    _damage(path, how)
    with pytest.raises(IndexCorruptError, match=path.name.replace(".", r"\.")):
        VectorStore.open(folder)


def test_crash_before_pointer_switch_keeps_previous_generation(folder: Path) -> None:
    store, vecs = make_store(folder, 300)
    assert store.save() == 1
    # A writer died while writing generation 2: some files complete, one partial, one temporary.
    shutil.copy(folder / "g00000001.slots", folder / "g00000002.slots")
    (folder / "g00000002.codes").write_bytes((folder / "g00000001.codes").read_bytes()[:100])
    (folder / "g00000002.graph.tmp").write_bytes(b"\0" * 64)

    reader = VectorStore.open(folder)
    assert reader.generation == 1 and reader.search(vecs[9], 1)[0][0, 0] == 95

    writer = VectorStore.open(folder, writable=True)
    writer.add(np.array([1]), unit_vectors(1, seed=5))
    assert writer.save() == 2
    assert VectorStore.open(folder).search(unit_vectors(1, seed=5), 1)[0][0, 0] == 1
    assert not (folder / "g00000002.graph.tmp").exists()


def test_save_keeps_previous_generation_and_deletes_older(folder: Path) -> None:
    store, _ = make_store(folder, 100)
    for i in range(3):
        store.add(np.array([100_000 + i]), unit_vectors(1, seed=i))
        store.save()
    names = {p.name for p in folder.iterdir()}
    assert "g00000003.graph" in names and "g00000002.graph" in names
    assert not any(n.startswith(("g00000001", "g00000000")) for n in names)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["body"]["generation"] == 3


def test_reader_picks_up_a_new_generation(folder: Path) -> None:
    writer, _ = make_store(folder, 200)
    writer.save()
    reader = VectorStore.open(folder)
    assert not reader.reload_if_changed()
    extra = unit_vectors(1, seed=11)
    writer.add(np.array([77]), extra)
    writer.save()
    assert 77 not in reader
    assert reader.reload_if_changed()
    assert 77 in reader and reader.generation == 2
    assert reader.search(extra, 1)[0][0, 0] == 77


def test_unsaved_additions_are_not_seen_after_reopening(folder: Path) -> None:
    store, _ = make_store(folder, 100)
    store.save()
    store.add(np.array([999_999]), unit_vectors(1, seed=3))
    store.close()
    with pytest.raises(UsageError, match="closed"):
        len(store)
    assert 999_999 not in VectorStore.open(folder, writable=True)


def test_rows_flushed_by_a_session_that_never_saved_are_trimmed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrieval.vectors.hnsw.originals as originals_module

    store, _ = make_store(folder, 100)
    store.save()
    monkeypatch.setattr(originals_module, "PENDING_FLUSH_BYTES", 1)  # every add goes straight to disk
    store.add(np.arange(5) + 10_000, unit_vectors(5, seed=4))
    originals = folder / "originals-000000.f32"
    assert originals.stat().st_size == 105 * DIM * 4
    store.close()
    reopened = VectorStore.open(folder, writable=True)
    assert originals.stat().st_size == 100 * DIM * 4 and len(reopened) == 100


# ---- filtered search -------------------------------------------------------------------------

FILTER_N = 3000
WAYS = ("exact", "scan", "post")


@pytest.fixture(scope="module")
def filter_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A saved 3000-vector store (ids 10·i + 5) shared by the filtered-search tests, which only read it."""
    path = tmp_path_factory.mktemp("filtered") / "vectors"
    store, vecs = make_store(path, FILTER_N)
    store.save()
    store.close()
    return path, vecs


def _filter_rows(vecs: np.ndarray, share: float, correlated: bool, seed: int) -> np.ndarray:
    """Rows of an allowed set: the nearest `share` of the vectors to one of them (a folder of one subject),
    or a random subset."""
    rng = np.random.default_rng(seed)
    m = int(share * len(vecs))
    if correlated:
        return np.argsort(-(vecs @ vecs[rng.integers(len(vecs))]))[:m]
    return rng.choice(len(vecs), m, replace=False)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("share", [0.1, 0.5])
@pytest.mark.parametrize("correlated", [False, True], ids=["random", "folder"])
def test_each_filtered_way_finds_the_exact_best_among_the_allowed_ids_only(
    filter_store: tuple[Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    way: str,
    share: float,
    correlated: bool,
) -> None:
    path, vecs = filter_store
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: way)
    ids = np.arange(FILTER_N) * 10 + 5
    rows = np.sort(_filter_rows(vecs, share, correlated, seed=int(share * 10)))
    allowed = ids[rows]
    outside = np.setdiff1d(np.arange(FILTER_N), rows)  # queries from outside the folder: the hard case
    queries = vecs[outside[:: len(outside) // 25][:25]]
    with VectorStore.open(path) as store:
        found, scores = store.search(queries, k=10, allowed=allowed)
    truth = exact_top(vecs[rows], allowed, queries, 10)
    assert np.isin(found, allowed).all()
    assert (found[:, 0] == truth[:, 0]).all()  # the exact best is never missed
    assert recall(found, truth) >= 0.98
    exact = np.einsum("ij,ikj->ik", queries, vecs[(found - 5) // 10])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # exact scores, best first
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("way", WAYS)
def test_each_filtered_way_ignores_unknown_and_removed_ids_and_pads_short_sets(
    folder: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: way)
    store, vecs = make_store(folder, 1000)
    store.save()
    ids = np.arange(1000) * 10 + 5
    query = vecs[7]
    rows = np.sort(_filter_rows(vecs, 0.3, correlated=False, seed=5))
    best = rows[np.argsort(-(vecs[rows] @ query))[:3]]
    store.remove(ids[best].tolist())  # the three best allowed vectors are deleted
    store.add(ids[best[:1]], vecs[[999]])  # and the best one comes back with another vector
    store.save()
    allowed = np.sort(np.concatenate([ids[rows], [6, 10**9]]))  # 6 and 10**9 were never stored
    found, _ = store.search(query, k=10, allowed=allowed)
    live = np.setdiff1d(rows, best[1:])
    vectors_now = vecs.copy()
    vectors_now[best[0]] = vecs[999]
    truth = exact_top(vectors_now[live], ids[live], query[None], 10)
    assert set(found[0].tolist()) <= set(ids[live].tolist())
    assert found[0, 0] == truth[0, 0] and recall(found, truth) >= 0.9
    few = np.array([ids[3], ids[4], 10**9], dtype=np.int64)
    short, short_scores = store.search(query, k=5, allowed=few)
    assert sorted(short[0, :2].tolist()) == sorted(ids[[3, 4]].tolist())
    assert short[0, 2:].tolist() == [-1, -1, -1] and np.isneginf(short_scores[0, 2:]).all()


def test_filtered_search_picks_exact_for_small_sets_a_scan_for_middle_ones_and_the_graph_for_large():
    n = 1_000_000
    assert filtered.choose(100, n, n, 192, graph=True) == "exact"
    assert filtered.choose(10_000, n, n, 192, graph=True) == "scan"
    assert filtered.choose(500_000, n, n, 192, graph=True) == "post"
    assert filtered.choose(500_000, n, n, 192, graph=False) == "scan"  # no graph to search


def test_the_scan_finds_the_best_allowed_when_its_first_stage_keeps_few_rows(
    filter_store: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, vecs = filter_store
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "scan")
    monkeypatch.setattr(filtered, "LEAD_KEEP", 2)  # the lead coordinates pass 2·32 of the 1500 rows on
    ids = np.arange(FILTER_N) * 10 + 5
    rows = np.sort(_filter_rows(vecs, 0.5, correlated=False, seed=3))
    queries = unit_vectors(20, seed=123)
    with VectorStore.open(path) as store:
        found, scores = store.search(queries, k=10, ef=32, allowed=ids[rows])
    truth = exact_top(vecs[rows], ids[rows], queries, 10)
    assert np.isin(found, ids[rows]).all()
    assert recall(found, truth) >= 0.9
    exact = np.einsum("ij,ikj->ik", queries, vecs[(found - 5) // 10])
    np.testing.assert_allclose(scores, exact, atol=1e-5)


@pytest.mark.parametrize("fallback", ["scan", "walk", "hnswlib walk"])
def test_a_post_filtered_query_far_from_every_allowed_vector_falls_back_and_is_still_exact(
    filter_store: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch, fallback: str
) -> None:
    path, vecs = filter_store
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "post")
    forced = "scan" if fallback == "scan" else "walk"
    monkeypatch.setattr(filtered, "fallback", lambda *args, **kwargs: forced)
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 0)
    if fallback == "hnswlib walk":  # no compiled walk at hand (numba missing, or unsaved changes)
        monkeypatch.setattr(VectorStore, "_level0", lambda self, st: None)
    scanned: list[int] = []
    walked: list[int] = []
    candidates = filtered.Lead.candidates
    monkeypatch.setattr(
        filtered.Lead, "candidates", lambda self, *a, **kw: scanned.append(1) or candidates(self, *a, **kw)
    )
    walk_candidates = filtered.WalkSet.candidates
    monkeypatch.setattr(
        filtered.WalkSet,
        "candidates",
        lambda self, *a, **kw: walked.append(1) or walk_candidates(self, *a, **kw),
    )
    ids = np.arange(FILTER_N) * 10 + 5
    centre = vecs[0]
    rows = np.sort(np.argsort(-(vecs @ centre))[:300])  # a folder: the 10 % nearest one vector
    far = vecs[np.argsort(vecs @ centre)[:5]]  # queries from the other side of the store
    near = vecs[rows[:5]]
    with VectorStore.open(path) as store:
        found, scores = store.search(far, k=10, ef=64, allowed=ids[rows])
        # their graph neighbourhoods hold (almost) no allowed vector: each walks with the filter or scans
        assert len(scanned) == (len(far) if fallback == "scan" else 0)
        assert len(walked) == (len(far) if fallback == "walk" else 0)
        truth = exact_top(vecs[rows], ids[rows], far, 10)
        assert (found == truth).mean() >= 0.9 and (found[:, 0] == truth[:, 0]).all()
        exact = np.einsum("ij,ikj->ik", far, vecs[(found - 5) // 10])
        np.testing.assert_allclose(scores, exact, atol=1e-5)
        scanned.clear()
        walked.clear()
        found, _ = store.search(near, k=10, ef=64, allowed=ids[rows])
        assert not scanned and not walked  # inside the folder the post-filtered graph search holds enough
        assert (found[:, 0] == ids[rows[:5]]).all()  # each finds itself


@pytest.mark.parametrize("way", WAYS)
def test_each_filtered_way_finds_vectors_added_after_a_search_and_never_removed_ones(
    folder: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: way)
    store, vecs = make_store(folder, 1200)
    ids = np.arange(1200) * 10 + 5
    allowed = np.append(ids[::2], [7])  # 7 is added below
    allowed.flags.writeable = False
    query = unit_vectors(1, seed=42)[0]
    store.search(query, k=5, allowed=allowed)  # head codes, lead and mask built for 1200 slots
    store.add(np.array([7]), query[None])
    found, scores = store.search(query, k=5, allowed=allowed)
    assert found[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    best = found[0, :3].tolist()
    store.remove(best)
    after, _ = store.search(query, k=5, allowed=allowed)
    assert not set(best) & set(after[0].tolist()) and (after[0] >= 0).all()
    live = np.setdiff1d(allowed, best)
    live = live[live != 7]
    truth = exact_top(vecs[(live - 5) // 10], live, query[None], 5)
    assert after[0, 0] == truth[0, 0]


def test_a_read_only_allowed_array_is_reused_until_the_store_changes(folder: Path) -> None:
    store, _ = make_store(folder, 600)
    store.save()
    ids = np.arange(600) * 10 + 5
    allowed = np.sort(np.concatenate([ids[::2], [7]]))  # 7 is not stored yet
    allowed.flags.writeable = False
    query = unit_vectors(1, seed=42)[0]
    first, _ = store.search(query, k=3, allowed=allowed)
    assert 7 not in first[0]
    store.add(np.array([7]), query[None])  # now stored, with the query's own vector
    again, scores = store.search(query, k=3, allowed=allowed)
    assert again[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    store.remove([7])  # removed: the slot count stays, the kept slots must not
    after, _ = store.search(query, k=3, allowed=allowed)
    assert 7 not in after[0] and (after[0] >= 0).all()


def test_filtered_sessions_taking_turns_keep_their_sets_up_to_the_cache_size(folder: Path) -> None:
    from retrieval.vectors.hnsw.store import FILTER_SETS

    store, _ = make_store(folder, 600)
    store.save()
    ids = np.arange(600) * 10 + 5
    sets = [ids[i :: FILTER_SETS + 1].copy() for i in range(FILTER_SETS + 1)]
    for allowed in sets:
        allowed.flags.writeable = False
    query = unit_vectors(1, seed=7)[0]
    st = store._live()
    built = [store._allowed_slots(st, allowed) for allowed in sets[:FILTER_SETS]]
    for _ in range(2):  # turns: each session finds what was built for it
        assert [store._allowed_slots(st, a) for a in sets[:FILTER_SETS]] == built
    found, _ = store.search(query, k=3, allowed=sets[0])
    assert np.isin(found, sets[0]).all()
    store._allowed_slots(st, sets[FILTER_SETS])  # one more: the least recently used one goes
    assert store._allowed_slots(st, sets[0]) is built[0]  # searched last, so kept
    assert store._allowed_slots(st, sets[1]) is not built[1]


def test_a_reader_keeps_its_head_codes_across_generations_and_scans_new_vectors(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "scan")
    writer, vecs = make_store(folder, 800)
    writer.save()
    reader = VectorStore.open(folder)
    allowed = np.arange(800) * 10 + 5
    reader.search(vecs[0], k=3, allowed=allowed)
    codes = reader._live().head_codes
    query = unit_vectors(1, seed=77)[0]
    writer.add(np.array([9001]), query[None])
    writer.save()
    assert reader.reload_if_changed()
    found, _ = reader.search(query, k=3, allowed=np.append(allowed, 9001))
    assert found[0, 0] == 9001  # the new vector is scanned too
    kept = reader._live().head_codes
    assert kept is not None and kept.step is codes.step and kept.offset is codes.offset  # extended, not built
    assert np.array_equal(kept.codes[:800], codes.codes) and len(kept.rows) == 801
    assert len(codes.rows) == 800  # the generation left behind, which searches may still read, is unchanged

"""The filtered search's compiled kernels: the walk over a saved hnswlib graph (vectors/hnsw/walk.py), the
two-stage int8 scan (scan.py), and when the store uses them."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np
import pytest

from retrieval.vectors.hnsw import filtered
from retrieval.vectors.hnsw.store import StoreParams, VectorStore
from retrieval.vectors.hnsw.walk import Level0


def _clusters(n: int, dim: int, groups: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `groups` centres, and the centre of each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    group = rng.integers(groups, size=n)
    vecs = centres[group] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, group


def _graph(tmp_path: Path, vecs: np.ndarray, labels: np.ndarray) -> Path:
    graph = hnswlib.Index(space="ip", dim=vecs.shape[1])
    graph.init_index(max_elements=2 * len(vecs), M=8, ef_construction=100)
    graph.add_items(vecs, labels, num_threads=1)
    path = tmp_path / "g.graph"
    graph.save_index(str(path))
    return path


def test_level0_reads_each_node_s_slot_and_vector_when_nodes_are_not_in_slot_order(tmp_path: Path) -> None:
    vecs, _ = _clusters(500, 16, 4, seed=1)
    order = np.random.default_rng(2).permutation(500)  # node i holds slot order[i]
    path = _graph(tmp_path, vecs[order], order)
    level0 = Level0.open(path, 16, 500)
    assert level0 is not None
    assert level0.slots.tolist() == order.tolist()
    assert (level0.slots[level0.nodes] == np.arange(500)).all()
    np.testing.assert_array_equal(level0.vectors(level0.nodes[[3, 77, 499]]), vecs[[3, 77, 499]])


def test_level0_refuses_a_file_of_other_dims_or_one_that_is_not_a_graph(tmp_path: Path) -> None:
    vecs, _ = _clusters(200, 16, 2, seed=1)
    path = _graph(tmp_path, vecs, np.arange(200))
    assert Level0.open(path, 8, 200) is None  # another vector length
    assert Level0.open(path, 16, 100) is None  # labels beyond the store's slots
    junk = tmp_path / "junk.graph"
    junk.write_bytes(b"\x01" * 500)
    assert Level0.open(junk, 16, 200) is None
    short = tmp_path / "short.graph"
    short.write_bytes(path.read_bytes()[:1000])  # truncated: fewer records than its header says
    assert Level0.open(short, 16, 200) is None


def test_the_walk_keeps_to_allowed_nodes_and_finds_the_best_of_them_from_far_away(tmp_path: Path) -> None:
    vecs, group = _clusters(3000, 24, 12, seed=3)
    path = _graph(tmp_path, vecs, np.arange(3000))
    level0 = Level0.open(path, 24, 3000)
    assert level0 is not None
    allowed_slots = np.flatnonzero(group < 6)  # a folder: half of the clusters
    mask = np.zeros(3000, dtype=np.uint8)
    mask[allowed_slots] = 1
    walk = filtered.WalkSet.build(level0, mask.tobytes(), allowed_slots)
    far = vecs[np.flatnonzero(group >= 6)[:20]]  # from the other half: their neighbours are disallowed
    hits = 0
    for q in far:
        slots, scores = walk.candidates(q, 32)
        assert len(slots) == filtered.WALK_WIDTH * 32 and mask[slots].all()
        np.testing.assert_allclose(scores + 1.0, vecs[slots] @ q, atol=1e-5)
        truth = allowed_slots[np.argsort(-(vecs[allowed_slots] @ q))[:10]]
        hits += len(set(truth.tolist()) & set(slots.tolist()))
    assert hits / (10 * len(far)) >= 0.95


def test_a_store_walks_its_saved_graph_only_while_it_holds_no_unsaved_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 1000)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((1500, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with VectorStore.create(tmp_path / "v", 32, StoreParams(graph_dims=16)) as store:
        store.add(np.arange(1500), vecs)
        assert store._level0(store._live()) is None  # never saved: no file to read
        store.save()
        level0 = store._level0(store._live())
        assert level0 is not None and len(level0.slots) == 1500
        store.add(np.array([5000]), vecs[:1])
        assert store._level0(store._live()) is None  # the file is no longer the graph in memory
        store.save()
        level0 = store._level0(store._live())
        assert level0 is not None and len(level0.slots) == 1501
        store.remove(np.arange(600))
        store.save()
        assert store._level0(store._live()) is None  # 901 live: hnswlib's walk is cheap enough


def test_the_compiled_walk_is_chosen_only_where_allowed_nodes_are_dense_enough_and_it_costs_less() -> None:
    n = 1_000_000
    assert filtered.fallback(500_000, n, 192, compiled=True) == "walk"
    assert filtered.fallback(10_000, n, 192, compiled=True) == "scan"  # 1 %: too sparse to walk through
    assert filtered.fallback(500_000, n, 192, compiled=False) == "walk"  # hnswlib's, at half the store
    # over the int8 codes in RAM it costs less than over the graph file: worth it at a smaller share
    share = next(m for m in range(50_000, n, 10_000) if filtered.fallback(m, n, 192, compiled=True) == "walk")
    assert filtered.fallback(share - 10_000, n, 192, compiled=True, codes=True) == "walk"


@pytest.mark.parametrize("dirty", [False, True], ids=["saved", "unsaved"])
def test_a_far_filtered_query_gives_the_same_best_allowed_with_or_without_unsaved_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirty: bool
) -> None:
    vecs, group = _clusters(2000, 32, 8, seed=5)
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "post")
    monkeypatch.setattr(filtered, "fallback", lambda *args, **kwargs: "walk")
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 0)
    with VectorStore.create(tmp_path / "v", 32, StoreParams(graph_dims=16)) as store:
        store.add(np.arange(2000), vecs)
        store.save()
        if dirty:
            store.remove([1999])
        allowed = np.flatnonzero(group < 4)
        allowed = allowed[allowed != 1999]
        far = vecs[np.flatnonzero(group >= 4)[:10]]
        found, scores = store.search(far, k=5, ef=32, allowed=allowed)
        assert (store._level0(store._live()) is None) == dirty
    truth = allowed[np.argsort(-(far @ vecs[allowed].T), axis=1)[:, :5]]
    assert (found[:, 0] == truth[:, 0]).all() and (found == truth).mean() >= 0.9
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", far, vecs[found]), atol=1e-5)


def _store_with_head_codes(tmp_path: Path, n: int, seed: int) -> tuple[VectorStore, np.ndarray]:
    vecs, _ = _clusters(n, 64, 10, seed=seed)
    store = VectorStore.create(tmp_path / "v", 64, StoreParams(graph_dims=40))
    store.add(np.arange(n), vecs)
    return store, vecs


def test_the_compiled_scan_keeps_what_the_numpy_scan_keeps(tmp_path: Path) -> None:
    store, vecs = _store_with_head_codes(tmp_path, 4000, seed=7)
    with store:
        st = store._live()
        head = st.head_codes_now()
        slots = np.sort(np.random.default_rng(1).choice(4000, 1500, replace=False))
        fast = filtered.Lead.build(head, slots, compiled=True)
        slow = filtered.Lead.build(head, slots, compiled=False)
        assert fast.lead.dtype == np.int8 and fast.nbytes < slow.nbytes
        graph_queries, _, _ = st.quantizer.prepare_queries(vecs[:10] + 0.01)
        for gq in graph_queries:
            for cands in (5, 40, 2000):  # fewer, about as many as and more than the first stage keeps
                got_slots, got = fast.candidates(gq, cands)
                want_slots, want = slow.candidates(gq, cands)
                assert len(got_slots) == len(want_slots) == min(cands, len(slots))
                assert np.isin(got_slots, slots).all()
                order_got, order_want = np.argsort(got_slots), np.argsort(want_slots)
                # ties at the cut may differ in float rounding; the scores of what is kept agree
                assert np.mean(got_slots[order_got] == want_slots[order_want]) >= 0.95
                np.testing.assert_allclose(np.sort(got), np.sort(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("way", ["scan", "post"])
def test_without_numba_a_large_store_scans_with_numpy_and_walks_with_hnswlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    vecs, group = _clusters(2000, 32, 8, seed=9)
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 0)
    monkeypatch.setattr(filtered, "_have_numba", lambda: False)  # as where numba fails to import
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: way)
    monkeypatch.setattr(filtered, "fallback", lambda *args, **kwargs: "walk")
    allowed = np.flatnonzero(group < 4)
    allowed.flags.writeable = False  # kept by the store with what it builds for it
    far = vecs[np.flatnonzero(group >= 4)[:10]]
    with VectorStore.create(tmp_path / "v", 32, StoreParams(graph_dims=16)) as store:
        store.add(np.arange(2000), vecs)
        store.save()
        found, _ = store.search(far, k=5, ef=32, allowed=allowed)
        entry = store._filter_cache[-1][3]
        assert entry.walk is None and store._level0(store._live()) is None
        if way == "scan":
            assert entry.lead is not None and entry.lead.lead.dtype == np.float32
    truth = allowed[np.argsort(-(far @ vecs[allowed].T), axis=1)[:, :5]]
    assert (found[:, 0] == truth[:, 0]).all() and (found == truth).mean() >= 0.9


def test_a_probed_post_filter_is_as_wide_as_the_allowed_share_near_the_query_says() -> None:
    n = 1_000_000
    assert filtered.post_width(192, 500_000, n, None) == 384  # unprobed: the store-wide share
    assert filtered.post_width(192, 500_000, n, 1.0) == 288  # all near ones allowed: 1.5x cands
    assert filtered.post_width(192, 500_000, n, 0.25) == 384  # never wider than the store-wide share says
    assert filtered.post_width(192, 100_000, n, 0.9) == 320
    assert filtered.post_width(192, 1_000, 2_000, 0.0) == 384


def test_queries_inside_a_folder_that_others_miss_are_probed_and_post_filtered_narrower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vecs, group = _clusters(3000, 32, 6, seed=11)
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "post")
    asked: list[float | None] = []
    post = VectorStore._post_filtered
    monkeypatch.setattr(
        VectorStore,
        "_post_filtered",
        lambda self, st, gq, c, m, mask, near=None: (
            asked.append(near),
            post(self, st, gq, c, m, mask, near),
        )[1],
    )
    allowed = np.flatnonzero(group < 3)
    allowed.flags.writeable = False
    far = vecs[np.flatnonzero(group >= 3)[:10]]
    inside = vecs[allowed[:10]]
    with VectorStore.create(tmp_path / "v", 32, StoreParams(graph_dims=16)) as store:
        store.add(np.arange(3000), vecs)
        store.save()
        store.search(far, k=5, ef=32, allowed=allowed)  # they come up short: the set now probes
        asked.clear()
        found, _ = store.search(inside, k=5, ef=32, allowed=allowed)
    assert len(asked) == len(inside) and all(near is not None and near > 0.5 for near in asked)
    truth = allowed[np.argsort(-(inside @ vecs[allowed].T), axis=1)[:, :5]]
    # a 15-dim head of 32 dims ranks candidates roughly: 0.86 of these places unnarrowed, 0.80 narrowed
    assert np.isin(found, allowed).all() and (found == truth).mean() >= 0.7

"""The unfiltered compiled search of a large saved store: a walk over the saved graph's links scoring int8
head codes (vectors/hnsw/walk.py `Links`), the scan for queries from another distribution, head codes saved
with each generation, and readers that never load hnswlib's copy of the graph."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np
import pytest

from retrieval.errors import IndexCorruptError
from retrieval.vectors.hnsw import fileformat, filtered, scan, walk
from retrieval.vectors.hnsw import store as store_module
from retrieval.vectors.hnsw.quantizer import Quantizer
from retrieval.vectors.hnsw.store import StoreParams, VectorStore

N, DIM = 3000, 32
PARAMS = StoreParams(graph_dims=16, m=8, ef_construction=100, ef_search=256)


def _clusters(n: int, dim: int, groups: int, seed: int) -> np.ndarray:
    """Unit vectors around `groups` centres that share one mean direction (as CLIP embeddings do)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)).astype(np.float32)
    vecs = centres[rng.integers(groups, size=n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs[:, 0] += 4.0
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores of N vectors count as large: they use the compiled search once saved."""
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 1000)


def _saved(folder: Path, vecs: np.ndarray) -> None:
    with VectorStore.create(folder, vecs.shape[1], PARAMS) as store:
        store.add(np.arange(len(vecs)), vecs)
        store.save()


def _recall(found: np.ndarray, queries: np.ndarray, vecs: np.ndarray, ids: np.ndarray | None = None) -> float:
    ids = np.arange(len(vecs)) if ids is None else ids
    truth = ids[np.argsort(-(queries @ vecs[ids].T), axis=1)[:, : found.shape[1]]]
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(owner, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_links_hold_each_slot_s_graph_neighbours_when_nodes_are_not_in_slot_order(tmp_path: Path) -> None:
    vecs = _clusters(800, 16, 6, seed=1)
    order = np.random.default_rng(2).permutation(800)  # node i holds slot order[i]
    graph = hnswlib.Index(space="ip", dim=16)
    graph.init_index(max_elements=800, M=6, ef_construction=60)
    graph.add_items(vecs[order], order, num_threads=1)
    graph.save_index(str(tmp_path / "g"))
    level0 = walk.Level0.open(tmp_path / "g", 16, 800)
    assert level0 is not None
    links = level0.links(800)
    assert (links.counts >= 1).all() and (links.counts <= level0.max_links).all()
    linked = [links.of(s) for s in range(800)]
    assert all(((row >= 0) & (row < 800) & (row != s)).all() for s, row in enumerate(linked))
    # a slot's links are its near neighbours, not the nodes that happen to share its record number
    near = np.mean([float((vecs[row] @ vecs[s]).mean()) for s, row in enumerate(linked)])
    assert near > float((vecs @ vecs.T).mean()) + 0.2


def test_a_saved_large_store_answers_by_the_compiled_walk_with_exact_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=3)
    _saved(tmp_path / "v", vecs)
    walks = _count_calls(monkeypatch, walk.Links, "marks")
    queries = _clusters(20, DIM, 12, seed=3)[:20] + 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with VectorStore.open(tmp_path / "v") as store:
        found, scores = store.search(queries, 10)
        assert len(walks) == len(queries)
        assert store._live().loaded_graph is None  # the reader never loaded hnswlib's copy
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", queries, vecs[found]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert _recall(found, queries, vecs) >= 0.95


def test_a_writer_with_unsaved_changes_and_a_small_store_search_with_hnswlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=4)
    walks = _count_calls(monkeypatch, walk.Links, "marks")
    with VectorStore.create(tmp_path / "v", DIM, PARAMS) as store:
        store.add(np.arange(N), vecs)
        store.search(vecs[:3], 5)  # never saved: no file to walk
        assert not walks
        store.save()
        walks.clear()  # the save's own probe walks (tuning)
        store.search(vecs[:3], 5)
        assert len(walks) == 3
        store.add(np.array([N]), vecs[:1])
        found, _ = store.search(vecs[:3], 5)  # the file is no longer the graph in memory
        assert len(walks) == 3 and store._live().loaded_graph is not None
    assert (found[:, 0] == [0, 1, 2]).all() or set(found[0, :2]) == {0, N}
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 10 * N)
    with VectorStore.open(tmp_path / "v") as reader:
        reader.search(vecs[:3], 5)
        assert len(walks) == 3 and reader._live().loaded_graph is not None


def test_a_post_filtered_search_walks_the_links_too_and_never_loads_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=5)
    _saved(tmp_path / "v", vecs)
    monkeypatch.setattr(filtered, "choose", lambda *args, **kwargs: "post")
    walks = _count_calls(monkeypatch, walk.Links, "marks")
    allowed = np.arange(0, N, 2)
    with VectorStore.open(tmp_path / "v") as store:
        found, scores = store.search(vecs[:20], 5, allowed=allowed)
        assert len(walks) >= 20 and store._live().loaded_graph is None
    assert (found % 2 == 0).all() and (found[::2, 0] == np.arange(0, 20, 2)).all()
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", vecs[:20], vecs[found]), atol=1e-5)
    assert _recall(found, vecs[:20], vecs, allowed) >= 0.95


def test_removed_vectors_never_come_back_from_the_compiled_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=6)
    walks = _count_calls(monkeypatch, walk.Links, "marks")
    with VectorStore.create(tmp_path / "v", DIM, PARAMS) as store:
        store.add(np.arange(N), vecs)
        store.save()
        gone = np.arange(0, 1200)  # under half: removed slots stay in the graph until compaction
        store.remove(gone)
        store.save()
        found, _ = store.search(vecs[:50], 10)
    assert walks and not np.isin(found, gone).any()
    assert _recall(found, vecs[:50], vecs, np.arange(1200, N)) >= 0.95


def test_a_query_from_another_distribution_scans_every_head_code_where_they_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=7)
    _saved(tmp_path / "v", vecs)
    rows: list[int] = []
    real = scan._lead_scores

    def spy(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        rows.append(len(codes))
        return real(codes, weights)

    monkeypatch.setattr(scan, "_lead_scores", spy)
    with VectorStore.open(tmp_path / "v") as store:
        quantizer = store._live().quantizer
        assert quantizer is not None
        basis = quantizer.basis
        # energy mostly along directions where the data barely varies, as a text query's against images
        text_like = basis[:, -1][None] + 0.6 * vecs[:10]
        text_like /= np.linalg.norm(text_like, axis=1, keepdims=True)
        assert (quantizer.head_share(text_like) < store_module.LOW_HEAD_SHARE).all()
        found, scores = store.search(text_like, 10)
        assert rows.count(N) == len(text_like)  # each scanned every slot's head codes
        np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", text_like, vecs[found]), atol=1e-5)
        assert _recall(found, text_like, vecs) >= 0.95
        rows.clear()
        monkeypatch.setattr(store_module, "SCAN_BYTES", 0)  # too many to scan: the walk answers
        store.search(text_like, 10)
        assert N not in rows


def test_head_codes_are_saved_with_each_generation_and_a_damaged_file_is_refused(
    tmp_path: Path, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=8)
    _saved(tmp_path / "v", vecs)
    with VectorStore.open(tmp_path / "v") as store:
        st = store._live()
        assert "head" in st.files and st.head_codes is not None
        saved = st.head_codes
        assert st.quantizer is not None
        fresh = filtered.HeadCodes.build(st.quantizer, st.originals, st.n_slots)
        np.testing.assert_array_equal(saved.codes, fresh.codes)
        np.testing.assert_array_equal(saved.step, fresh.step)
        head_file = tmp_path / "v" / st.files["head"]["name"]
    head_file.write_bytes(head_file.read_bytes()[:-DIM])
    with pytest.raises(IndexCorruptError, match=head_file.name):
        VectorStore.open(tmp_path / "v")


def test_a_store_saved_without_head_codes_still_searches_and_its_next_save_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=9)
    _saved(tmp_path / "v", vecs)
    body = fileformat.read_manifest(tmp_path / "v")
    del body["files"]["head"]  # as a store saved before head codes were kept
    body.pop("checksum", None)
    fileformat.write_manifest(tmp_path / "v", body)
    with VectorStore.open(tmp_path / "v") as reader:
        found, _ = reader.search(vecs[:5], 3)  # by hnswlib: no pass over every original to encode them
        assert (found[:, 0] == np.arange(5)).all()
        assert reader._live().head_codes is None and reader._live().loaded_graph is not None
    with VectorStore.open(tmp_path / "v", writable=True) as writer:
        writer.add(np.array([N]), _clusters(1, DIM, 12, seed=99))  # not a copy of a query: no tie for top-1
        writer.save()
        assert "head" in writer._live().files
    walks = _count_calls(monkeypatch, walk.Links, "marks")
    with VectorStore.open(tmp_path / "v") as reader:
        found, _ = reader.search(vecs[:5], 3)
        assert walks and (found[:, 0] == np.arange(5)).all()


def test_head_code_rows_start_on_and_fill_whole_cache_lines_and_their_file_keeps_them_unpadded(
    tmp_path: Path, large: None
) -> None:
    """A walk reads head rows at random: an unaligned 444-byte row spans 8 cache lines where 7 hold it."""
    vecs = _clusters(N, DIM, 12, seed=12)
    _saved(tmp_path / "v", vecs)
    with VectorStore.open(tmp_path / "v", writable=True) as store:
        st = store._live()
        assert st.quantizer is not None and st.head_codes is not None
        h = st.quantizer.head_dims
        head_file = tmp_path / "v" / st.files["head"]["name"]
        assert head_file.stat().st_size == 8 * h + st.n_slots * h  # the file's rows are not padded
        store.add(np.arange(N, N + 700), _clusters(700, DIM, 12, seed=13))
        for head in (st.head_codes, st.head_codes_now()):  # as read back, and as grown
            rows = head.rows
            assert rows.ctypes.data % filtered.ROW_ALIGN == 0 and rows.flags.c_contiguous
            assert rows.shape[1] % filtered.ROW_ALIGN == 0 and rows.shape[1] >= h
            assert not rows[:, h:].any()
            np.testing.assert_array_equal(head.codes, rows[:, :h])
        grown = st.head_codes_now()
        exact = st.originals.get(np.arange(st.n_slots)) @ st.quantizer.basis[:, :h]
        encoded = np.clip(np.rint((exact - grown.offset) / grown.step), -127, 127)
        np.testing.assert_array_equal(grown.codes, encoded)
        # the kernels read a row only as far as the weights go: the padding is never scored
        weights = np.random.default_rng(14).standard_normal(h).astype(np.float32)
        expected = grown.codes.astype(np.float32) @ weights
        np.testing.assert_allclose(scan.all_scores(grown.rows, weights), expected, rtol=1e-4, atol=1e-3)
        slots = np.array([5, 0, N + 3, 17], dtype=np.int64)
        lead = grown.codes[slots, :8].copy()
        found, scores = scan.two_stage(lead, slots, grown.rows, weights[:8], weights, 9, 9)
        np.testing.assert_allclose(scores, expected[found], rtol=1e-4, atol=1e-3)


def test_row_prefetch_hints_land_in_every_cache_line_of_a_row_wherever_it_starts() -> None:
    """`prefetch_row` hints every `line_step` elements from a row's start, and its last element."""
    from retrieval.vectors.hnsw.prefetch import LINE, line_step

    for itemsize in (1, 2, 4, 8):
        step = line_step(itemsize)
        for n in (1, 15, 16, 64, 68, 111, 444, 512):
            hinted = [*range(0, n, step), n - 1]
            for start in range(0, LINE, itemsize):
                lines = {(start + i * itemsize) // LINE for i in hinted}
                spanned = set(range(start // LINE, (start + n * itemsize - 1) // LINE + 1))
                assert lines == spanned, (itemsize, n, start)


def test_head_codes_span_each_coordinate_s_own_range_not_one_around_zero() -> None:
    """The leading coordinates of uncentred data sit far from 0, and a small cluster puts a coordinate far
    from the rest: codes centred on 0 with a few root mean squares either side clipped both."""
    rng = np.random.default_rng(10)
    vecs = _clusters(4000, DIM, 8, seed=10)
    vecs[:40] = rng.standard_normal(DIM).astype(np.float32) * 0.1
    vecs[:40, 5] = 3.0  # a cluster of 1 % far out along one direction
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)

    class _Rows:
        def get(self, slots: np.ndarray) -> np.ndarray:
            return vecs[slots]

    quantizer = Quantizer.fit(vecs, 17)
    head = filtered.HeadCodes.build(quantizer, _Rows(), len(vecs))  # type: ignore[arg-type]
    exact = vecs @ quantizer.basis[:, : quantizer.head_dims]
    decoded = head.codes.astype(np.float32) * head.step + head.offset
    assert (np.abs(head.codes) < 127).all()
    assert (np.abs(decoded - exact) <= head.step / 2 + 1e-6).all()


def test_a_query_s_share_is_measured_where_the_data_lies_even_when_the_head_holds_every_dimension() -> None:
    rng = np.random.default_rng(11)
    scale = np.arange(1, DIM + 1, dtype=np.float32) ** -1.0
    vecs = rng.standard_normal((5000, DIM)).astype(np.float32) * scale
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    quantizer = Quantizer.fit(vecs, None)  # no tail: the head is the whole vector
    assert quantizer.head_dims == DIM
    image_like = vecs[:20]
    text_like = quantizer.basis[:, -1:].T + 0.4 * vecs[:1]  # mostly where images barely vary
    text_like /= np.linalg.norm(text_like)
    assert (quantizer.head_share(image_like) > store_module.LOW_HEAD_SHARE).all()
    assert quantizer.head_share(text_like)[0] < store_module.LOW_HEAD_SHARE
    gq, _, _ = quantizer.prepare_queries(image_like)
    np.testing.assert_allclose(
        quantizer.head_share(image_like, gq), quantizer.head_share(image_like), rtol=1e-5
    )


def test_walks_give_the_same_answer_when_their_visited_marks_wrap_around(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=12)
    _saved(tmp_path / "v", vecs)
    with VectorStore.open(tmp_path / "v") as store:
        first, _ = store.search(vecs[:5], 10)
        walk._threads.mark = 0xFFFE  # the next walk takes the last mark, the one after starts again
        again = [store.search(vecs[:5], 10)[0] for _ in range(3)]
        assert walk._threads.mark < 20  # wrapped: 15 walks since
    for found in again:
        np.testing.assert_array_equal(found, first)


def test_a_graph_file_gone_before_a_reader_needs_it_is_one_line_saying_to_open_the_store_again(
    tmp_path: Path,
) -> None:
    with pytest.raises(IndexCorruptError, match="open the store again"):
        store_module._load_graph(tmp_path / "g00000003.graph", DIM, N)


def test_a_scan_split_among_threads_scores_every_row_as_one_thread_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(8)
    codes = rng.integers(-127, 128, size=(1001, 40)).astype(np.int8)
    weights = rng.standard_normal(40).astype(np.float32)
    monkeypatch.setattr(scan, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(scan, "cores", lambda: 3)
    split = scan.all_scores(codes, weights)
    assert split.shape == (1001,)
    np.testing.assert_allclose(split, codes.astype(np.float32) @ weights, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("ef", [24, 96])  # fewer candidates than the exact re-score takes (no tail), more
def test_one_compiled_call_answers_as_the_walk_then_the_re_rank_do(
    tmp_path: Path, large: None, ef: int
) -> None:
    vecs = _clusters(N, DIM, 12, seed=13)
    with VectorStore.create(tmp_path / "v", DIM, PARAMS) as store:
        store.add(np.arange(N), vecs)
        store.save()
        store.remove(np.arange(0, 600, 2))  # removed slots the walk still meets
        store.save()
    queries = vecs[300:330] + 0.05 * np.random.default_rng(14).standard_normal((30, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with VectorStore.open(tmp_path / "v") as store:
        st = store._live()
        links = store._links(st)
        assert links is not None and st.quantizer is not None and st.originals.mapped is not None
        depth = st.tuned.rescore if st.tuned is not None else store_module.COMPILED_RESCORE * PARAMS.rescore
        assert depth == 48  # between the two
        found, scores = store.search(queries, 10, ef=ef)
        for i, query in enumerate(queries):
            graph_row, tail_weights, bias = st.quantizer.prepare_queries(query[None])
            alone = st.quantizer.prepare_queries(query[None], tail=False)
            np.testing.assert_allclose(alone[0], graph_row, rtol=1e-5, atol=1e-6)
            assert alone[1].shape == (1, 0) and alone[2][0] == 0
            slots, head = store._walk_links(st, links, graph_row[0], ef, lead=True)
            live = st.slot_ids[slots] >= 0
            steps, exact = scan.rerank(
                slots[live],
                head[live] + bias[0],
                st.codes,
                tail_weights[0],
                st.originals.mapped,
                query,
                depth,
                10,
            )
            np.testing.assert_array_equal(found[i], st.slot_ids[steps])
            np.testing.assert_allclose(scores[i], exact, rtol=1e-5)
    assert not np.isin(found, np.arange(0, 600, 2)).any()


def test_the_filtered_walk_steps_through_every_node_but_keeps_only_allowed_ones(
    tmp_path: Path, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=15)
    _saved(tmp_path / "v", vecs)
    allowed = np.zeros(N, dtype=np.uint8)
    allowed[np.random.default_rng(16).choice(N, N // 2, replace=False)] = 1
    with VectorStore.open(tmp_path / "v") as store:
        st = store._live()
        links = store._links(st)
        assert links is not None and st.quantizer is not None
        head = st.head_codes_now()
        seeds = store._seed_sample(st, lead=False)[0][:16]
        inside = np.flatnonzero(allowed)[:16]

        def walked(
            weights: np.ndarray, starts: np.ndarray, keep: np.ndarray, limit: int, through: bool
        ) -> tuple[np.ndarray, np.ndarray, bool]:
            seen, mark = links.marks()
            return walk._search(  # type: ignore[no-any-return]
                links.offsets,
                links.flat,
                links.longest,
                head.rows,
                weights,
                starts,
                64,
                seen,
                mark,
                keep,
                limit,
                through,
            )

        for query in vecs[:20] + 0.02:
            weights, _ = head.weights(st.quantizer.prepare_queries(query[None])[0][0])
            truth = np.argsort(-(head.codes[: st.n_slots].astype(np.float32) @ weights))
            for keep, rule, starts, through in (
                (walk.EVERY, np.ones(N, dtype=bool), seeds, False),
                (allowed, allowed == 1, seeds, False),  # every node steers, allowed ones are kept
                (allowed, allowed == 1, inside, True),  # onto allowed nodes only, from some of them
            ):
                found, scores, ended = walked(weights, starts, keep, 0, through)
                assert ended and len(found) == 64 and rule[found].all()
                # by the int8 head: the walk's own scores, so its best 10 are the allowed set's best 10
                best = truth[rule[truth]][:10]
                assert len(set(found.tolist()) & set(best.tolist())) >= 9
                np.testing.assert_allclose(scores, head.codes[found].astype(np.float32) @ weights, rtol=1e-4)
            # five expansions hold far fewer than 64 allowed: it stopped at the limit
            assert not walked(weights, seeds, allowed, 5, False)[2]


def test_a_filtered_search_of_a_large_share_takes_the_compiled_filtered_walk_with_exact_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None
) -> None:
    vecs = _clusters(N, DIM, 12, seed=17)
    _saved(tmp_path / "v", vecs)
    monkeypatch.setattr(
        filtered, "choose", lambda *args, walk=None, **kwargs: "scan" if walk is None else "graph"
    )
    walked = _count_calls(monkeypatch, VectorStore, "_graph_filtered")
    allowed = np.sort(np.random.default_rng(18).choice(N, N // 2, replace=False))
    allowed.flags.writeable = False
    queries = vecs[:30] + 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with VectorStore.open(tmp_path / "v") as store:
        found, scores = store.search(queries, 10, allowed=allowed)
        assert store._live().loaded_graph is None  # the links and codes only, as unfiltered readers
    assert len(walked) == len(queries)
    assert np.isin(found, allowed).all()
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", queries, vecs[found]), atol=1e-5)
    assert _recall(found, queries, vecs, allowed) >= 0.95


@pytest.mark.parametrize("then", ["walk", "scan"])
def test_a_query_away_from_a_folder_does_not_flood_its_own_neighbourhood_but_walks_allowed_nodes_or_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: None, then: str
) -> None:
    vecs = _clusters(N, DIM, 12, seed=19)
    _saved(tmp_path / "v", vecs)
    monkeypatch.setattr(filtered, "fallback", lambda *args, **kwargs: then)
    monkeypatch.setattr(
        filtered, "choose", lambda *args, walk=None, **kwargs: "scan" if walk is None else "graph"
    )
    walks: list[tuple[int, bool]] = []  # (results, through) of each compiled filtered walk
    real = VectorStore._one_pass

    def spy(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        answer = real(*args, **kwargs)  # type: ignore[arg-type]
        walks.append((len(answer[0]), bool(kwargs.get("through"))))
        return answer

    monkeypatch.setattr(VectorStore, "_one_pass", staticmethod(spy))
    monkeypatch.setattr(filtered, "GRAPH_LIMIT", 10**6)  # no give-up on the way: only where it starts
    with VectorStore.open(tmp_path / "v") as store:
        st = store._live()
        assert st.quantizer is not None
        # a folder: the half of the store nearest one direction; the queries come from the other half
        side = vecs @ st.quantizer.basis[:, 1]
        allowed = np.flatnonzero(side > np.median(side))
        allowed.flags.writeable = False
        far = vecs[np.argsort(side)[:40]]
        found, scores = store.search(far, 10, allowed=allowed)
        entry = store._filter_cache[-1][3]
        near = vecs[np.argsort(side)[-40:]]
        inside = _count_calls(monkeypatch, scan, "two_stage")
        store.search(near, 10, allowed=allowed)
    first = [got for got, through in walks if not through]
    # the far queries' best start slots lie in their own, disallowed, neighbourhood: most never start
    assert len(first) == len(far) + len(near) and sum(got == 0 for got in first[: len(far)]) >= 0.9 * len(far)
    assert all(got == 10 for got in first[len(far) :]) and not inside  # those inside the folder walk
    if then == "walk":  # the far ones walked through allowed nodes only, from a sample of them
        assert (
            sum(through for _, through in walks) == sum(got == 0 for got in first) and entry.seeds is not None
        )
    else:
        assert entry.lead is not None and entry.seeds is None
    assert np.isin(found, allowed).all()
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", far, vecs[found]), atol=1e-5)
    assert _recall(found, far, vecs, allowed) >= 0.95


def test_the_compiled_filtered_walk_stands_in_for_the_post_filter_where_it_is_at_hand() -> None:
    n = 1_000_000
    assert filtered.choose(500_000, n, n, 192, graph=True, walk=128) == "graph"
    assert filtered.choose(50_000, 100_000, 100_000, 192, graph=True, walk=128) == "graph"  # half of 100k
    assert filtered.choose(10_000, 100_000, 100_000, 192, graph=True, walk=128) == "scan"  # a tenth: scan
    assert filtered.choose(500_000, n, n, 192, graph=True) == "post"  # no compiled walk: hnswlib's graph
    assert filtered.choose(100, n, n, 192, graph=True, walk=128) == "exact"
    assert filtered.graph_limit(128, 500_000, n) == 4 * 256
    assert filtered.graph_least(16, 500_000, n) == 2  # of a query's 16 start slots, at half the store
    assert filtered.graph_least(16, 10_000, n) == 1

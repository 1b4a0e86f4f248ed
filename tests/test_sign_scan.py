"""The full scan's first stage (vectors/hnsw/signs.py): a bit per rotated coordinate of every slot, derived
from the store's int8 codes, scored against a query rounded to a few bits, and the store's scan scoring
only the best rows by it on their whole head."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retrieval.vectors.hnsw import filtered, scan, signs
from retrieval.vectors.hnsw import store as store_module
from retrieval.vectors.hnsw.store import StoreParams, VectorStore

N, DIM = 3000, 100  # two words of signs a row, the second part padding
PARAMS = StoreParams(graph_dims=40, m=8, ef_construction=100, ef_search=256)


def _clusters(n: int, seed: int) -> np.ndarray:
    """Unit vectors around centres that share one mean direction (as CLIP embeddings do)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    vecs = centres[rng.integers(20, size=n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
    vecs[:, 0] += 4.0
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """A saved store of N vectors that counts as large (the compiled search and its scan)."""
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 1000)
    vecs = _clusters(N, seed=3)
    with VectorStore.create(tmp_path / "v", DIM, PARAMS) as store:
        store.add(np.arange(N), vecs)
        store.save()
    return tmp_path / "v", vecs


def _bits(words: np.ndarray, dim: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :dim].astype(bool)


def test_signs_are_those_of_the_rotated_vectors_and_a_constant_coordinate_gets_no_weight(
    saved: tuple[Path, np.ndarray],
) -> None:
    with VectorStore.open(saved[0]) as store:
        st = store._live()
        assert st.quantizer is not None
        sg = st.signs_now()
        rotated = st.quantizer.rotate(saved[1])
        bits = _bits(sg.words, DIM)
        assert sg.words.shape == (N, 2) and not _bits(sg.words, 128)[:, DIM:].any()  # padding stays clear
        # the codes round each coordinate: away from 0 by more than a code step, the sign is the vector's
        clear = np.abs(rotated) > 0.02
        assert clear.mean() > 0.5
        assert (bits[clear] == (rotated[clear] > 0)).all()
        # the shared mean direction has one sign in every row: it would take the query's whole range
        assert not sg.weighted[0] and sg.weighted[1:].all()
        np.testing.assert_array_equal(sg.sample, sg.words[:: sg.stride])


def test_a_row_s_score_is_the_rounded_query_summed_over_its_set_bits(saved: tuple[Path, np.ndarray]) -> None:
    rng = np.random.default_rng(4)
    with VectorStore.open(saved[0]) as store:
        sg = store._live().signs_now()
        rotated = rng.standard_normal(DIM).astype(np.float32)
        planes = sg.planes(rotated)
        assert planes.shape == (signs.BITS, 2)
        q = np.where(sg.weighted, rotated, 0.0)
        u = np.rint(q * signs.LEVELS / np.abs(q).max()).astype(np.int64)
        assert u.max() == signs.LEVELS or u.min() == -signs.LEVELS
        out = np.empty(N, dtype=np.int64)
        signs._scores(sg.words, planes, out)
        np.testing.assert_array_equal(out, _bits(sg.words, DIM).astype(np.int64) @ u)


@pytest.mark.parametrize("threads", [1, 3])
def test_the_best_rows_by_sign_score_are_all_those_above_a_cut_near_the_count_asked(
    saved: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    monkeypatch.setattr(signs, "PARALLEL_ROWS", 0 if threads > 1 else 10**9)
    monkeypatch.setattr(scan, "cores", lambda: threads)
    monkeypatch.setattr(signs, "SAMPLE", 500)
    with VectorStore.open(saved[0]) as store:
        sg = store._live().signs_now()
        assert sg.stride == N // 500 and len(sg.sample) == 500
        rotated = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
        out = np.empty(N, dtype=np.int64)
        signs._scores(sg.words, sg.planes(rotated), out)
        kept = signs.best(sg, rotated, 600)
        assert (np.diff(kept) > 0).all() and 300 <= len(kept) <= 1200
        rest = np.setdiff1d(np.arange(N), kept)
        assert out[kept].min() > out[rest].max()


def test_a_large_store_s_scan_scores_only_its_best_rows_by_sign_on_their_whole_head(
    saved: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, vecs = saved
    monkeypatch.setattr(signs, "KEEP_MIN", 400)  # 2 × 400 < N: the sign stage first
    monkeypatch.setattr(store_module, "SCAN_CANDS", 100)  # it keeps at least 4 × the candidates
    heads: list[int] = []
    real_head, real_all = scan._head_scores, scan._lead_scores
    monkeypatch.setattr(scan, "_head_scores", lambda c, s, w: heads.append(len(s)) or real_head(c, s, w))
    monkeypatch.setattr(scan, "_lead_scores", lambda c, w: heads.append(len(c)) or real_all(c, w))
    removed = np.arange(0, N, 7)
    with VectorStore.open(folder, writable=True) as store:
        store.remove(removed)
        store.save()
    with VectorStore.open(folder) as store:
        quantizer = store._live().quantizer
        assert quantizer is not None
        # energy mostly along directions where the data barely varies, as a text query's against images
        text_like = quantizer.basis[:, -1][None] + 0.6 * vecs[1:40:3]
        text_like /= np.linalg.norm(text_like, axis=1, keepdims=True)
        assert (quantizer.head_share(text_like) < store_module.LOW_HEAD_SHARE).all()
        found, scores = store.search(text_like, 10)
    assert heads and max(heads) <= 800  # no query scored every head: about KEEP_MIN rows each
    assert not np.isin(found, removed).any()
    np.testing.assert_allclose(scores, np.einsum("ij,ikj->ik", text_like, vecs[found]), atol=1e-5)
    alive = np.setdiff1d(np.arange(N), removed)
    truth = alive[np.argsort(-(text_like @ vecs[alive].T), axis=1)[:, :10]]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.9


def test_the_scan_budget_bounds_what_a_scan_costs_not_the_bytes_of_every_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose heads alone exceed SCAN_BYTES (1.15M CLIP-like vectors) scans while its signs and its
    kept rows' heads fit (~3M): past that its text queries walked, at recall@10 ~0.88 by ef 4096 at 1M."""
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 1000)
    vecs = _clusters(N, seed=4)
    folder = tmp_path / "v"
    with VectorStore.create(folder, DIM, replace(PARAMS, graph_dims=96)) as store:  # most dims in the head
        store.add(np.arange(N), vecs)
        store.save()
    monkeypatch.setattr(signs, "KEEP_MIN", 400)  # 2 × 400 < N: the sign stage first
    monkeypatch.setattr(store_module, "SCAN_CANDS", 100)
    heads: list[int] = []
    real_head = scan._head_scores
    monkeypatch.setattr(scan, "_head_scores", lambda c, s, w: heads.append(len(s)) or real_head(c, s, w))
    with VectorStore.open(folder) as store:
        st = store._live()
        quantizer = st.quantizer
        assert quantizer is not None
        staged = signs.scan_reads(st.n_slots, st.n_alive, quantizer.head_dims, quantizer.dim, 400)
        every_head = st.n_slots * quantizer.head_dims
        assert staged < every_head
        text_like = quantizer.basis[:, -1][None] + 0.6 * vecs[2:40:3]
        text_like /= np.linalg.norm(text_like, axis=1, keepdims=True)
        monkeypatch.setattr(store_module, "SCAN_BYTES", every_head - 1)
        found, _ = store.search(text_like, 10)
        assert len(heads) == len(text_like)  # every query scanned: its signs, then its best rows' heads
        heads.clear()
        monkeypatch.setattr(store_module, "SCAN_BYTES", int(staged) - 1)  # a scan costs too much: the walk
        store.search(text_like, 10)
        assert not heads
    truth = np.argsort(-(text_like @ vecs.T), axis=1)[:, :10]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.9


def test_warm_up_builds_what_the_first_searches_would_and_they_build_nothing_again(
    saved: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, vecs = saved
    monkeypatch.setattr(signs, "KEEP_MIN", 400)  # 2 × 400 < N: its scans have a sign stage
    monkeypatch.setattr(store_module, "SCAN_CANDS", 100)
    with VectorStore.open(folder) as store:
        st = store._live()
        assert st.links is None and st.signs is None  # an opened store builds them on its first searches
        store.warm_up()
        links, sign_rows = st.links, st.signs
        assert links and sign_rows is not None
        quantizer = st.quantizer
        assert quantizer is not None
        text_like = quantizer.basis[:, -1][None] + 0.6 * vecs[5:20:5]
        text_like /= np.linalg.norm(text_like, axis=1, keepdims=True)
        found, _ = store.search(np.vstack([vecs[:3], text_like]), 3)
        assert st.links is links and st.signs is sign_rows
        assert found[:3, 0].tolist() == [0, 1, 2]
    with VectorStore.create(tmp_path / "empty", DIM, PARAMS) as empty:
        empty.warm_up()  # nothing to build
        assert empty.search(vecs[:1], 1)[0].tolist() == [[-1]]


def test_a_warm_reload_builds_the_next_generation_while_searches_go_on_with_the_current(
    saved: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = saved
    monkeypatch.setattr(signs, "KEEP_MIN", 400)  # its scans have a sign stage
    monkeypatch.setattr(store_module, "SCAN_CANDS", 100)
    added = _clusters(1, seed=99)
    with VectorStore.open(folder) as reader:
        reader.warm_up()
        before = reader._live()
        assert before.signs is not None and before.head_codes is not None
        with VectorStore.open(folder, writable=True) as writer:  # another process's ingest
            writer.add(np.array([N]), added)
            writer.save()
        warming, go_on = threading.Event(), threading.Event()
        warm = VectorStore._warm

        def held_warm(self: VectorStore, st: object) -> None:
            warming.set()
            assert go_on.wait(30)
            warm(self, st)  # type: ignore[arg-type]

        monkeypatch.setattr(VectorStore, "_warm", held_warm)
        switched: list[bool] = []
        refresh = threading.Thread(target=lambda: switched.append(reader.reload_if_changed(warm=True)))
        refresh.start()
        try:
            assert warming.wait(30)
            # meanwhile a request's own reload returns at once, and its search reads the current generation
            assert reader.reload_if_changed() is False and reader._live() is before
            assert reader.search(added, 1)[0][0, 0] != N
        finally:
            go_on.set()
            refresh.join(30)
        assert switched == [True]
        st = reader._live()
        assert st is not before and st.links and st.signs is not None
        assert len(st.signs.words) == N + 1  # built for the new generation before any search of it
        assert reader.search(added, 1)[0][0, 0] == N
        assert len(before.signs.words) == N and len(before.head_codes.rows) == N  # the one left is unchanged

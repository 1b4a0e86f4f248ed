"""Each large store's default ef, chosen at its save from probe queries drawn from the store itself
(vectors/hnsw/tuning.py): the probes' walks leave the probe out, the choice is the least ef reaching the
target, it is kept in the manifest, readers use it, and a store that grows past RETUNE chooses again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.vectors.hnsw import fileformat, filtered, scan, tuning
from retrieval.vectors.hnsw.fileformat import MANIFEST
from retrieval.vectors.hnsw.store import StoreParams, VectorStore

DIM = 32
PARAMS = StoreParams(graph_dims=16, m=8, ef_construction=100, ef_search=256)


@pytest.fixture(autouse=True)
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores of a few thousand vectors count as large: the compiled search answers them once saved."""
    monkeypatch.setattr(filtered, "COMPILED_MIN_N", 1000)


def _clusters(n: int, groups: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, DIM)).astype(np.float32)
    vecs = centres[rng.integers(groups, size=n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _saved(folder: Path, vecs: np.ndarray, params: StoreParams = PARAMS) -> None:
    with VectorStore.create(folder, DIM, params) as store:
        store.add(np.arange(len(vecs)), vecs)
        store.save()


def _recall(found: np.ndarray, queries: np.ndarray, vecs: np.ndarray) -> float:
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, : found.shape[1]]
    return tuning.recall(found, truth)


def _fake_search(reach: dict[int, int], truth: np.ndarray, calls: list[int]):
    """A search whose answers hold reach[ef] of each row's truth (the rest -1)."""

    def search(ef: int) -> np.ndarray:
        calls.append(ef)
        found = truth.copy()
        found[:, reach[ef] :] = -1
        return found

    return search


def test_choose_takes_the_least_rung_reaching_the_target_trying_few_rungs() -> None:
    ladder = (16, 32, 64, 128, 256, 512, 1024)
    truth = np.arange(40).reshape(4, 10)
    reach = {16: 5, 32: 7, 64: 8, 128: 9, 256: 10, 512: 10, 1024: 10}
    calls: list[int] = []
    ef, reached = tuning.choose(_fake_search(reach, truth, calls), truth, ladder, target=0.9)
    assert (ef, reached) == (128, 0.9)
    assert calls == [16, 64, 256, 128]  # two rungs at a time, then the one skipped
    calls.clear()
    assert tuning.choose(_fake_search(reach, truth, calls), truth, ladder, target=0.95) == (256, 1.0)
    assert calls == [16, 64, 256, 128]


def test_choose_gives_the_top_rung_where_no_rung_reaches_the_target() -> None:
    ladder = (16, 32, 64, 128, 256)
    truth = np.arange(20).reshape(2, 10)
    reach = dict.fromkeys(ladder, 6)
    calls: list[int] = []
    assert tuning.choose(_fake_search(reach, truth, calls), truth, ladder, target=0.99) == (256, 0.6)
    assert calls == [16, 64, 256]


def test_a_deeper_re_score_is_taken_where_it_reaches_the_target_at_less_cost() -> None:
    ladder = (16, 32, 64, 128, 256, 512, 1024)
    truth = np.arange(40).reshape(4, 10)
    # the shallow re-score needs ef 1024; twice as deep reaches at 128; four times as deep at 64
    need = {48: 1024, 96: 128, 192: 64}
    calls: list[tuple[int, int]] = []

    def search(ef: int, rescore: int) -> np.ndarray:
        calls.append((ef, rescore))
        found = truth.copy()
        if ef < need[rescore]:
            found[:, 9:] = -1
        return found

    ef, rescore, reached = tuning.choose_with_rescore(search, truth, ladder, (48, 96, 192), target=0.95)
    assert tuning.cost(128, 96) < tuning.cost(1024, 48) and tuning.cost(64, 192) < tuning.cost(128, 96)
    assert (ef, rescore, reached) == (64, 192, 1.0)
    assert max(e for e, r in calls if r == 96) == 256  # climbs only until it reaches the target
    assert all(e <= 128 for e, r in calls if r == 192)  # no rung above the ef already found


def test_re_scoring_every_candidate_is_chosen_where_ranking_them_by_a_long_tail_costs_more() -> None:
    ladder = (16, 32, 64, 128, 192, 256, 512)
    truth = np.arange(40).reshape(4, 10)

    # re-scoring 48 (ranked by the tail) reaches the target at ef 256; re-scoring every candidate at 192
    def search(ef: int, rescore: int) -> np.ndarray:
        found = truth.copy()
        if ef < (192 if rescore >= ef else 256):
            found[:, 9:] = -1
        return found

    short = tuning.choose_with_rescore(search, truth, ladder, (48, tuning.EVERY), target=0.95, tail_dims=0)
    long = tuning.choose_with_rescore(search, truth, ladder, (48, tuning.EVERY), target=0.95, tail_dims=400)
    assert short == (256, 48, 1.0)  # no tail to rank by: the shallower exact re-score is cheaper
    assert long == (192, 192, 1.0)  # 400 tail dims: ranking by them costs more than re-scoring all
    described = tuning.Tuning(192, 192, 0.99, 10**5, 1, 256, 1.0).describe()
    assert described.startswith("ef 192, every candidate re-scored exactly")


def test_a_probe_is_hidden_from_its_own_walk(tmp_path: Path) -> None:
    vecs = _clusters(3000, 12, 0.5, seed=1)
    _saved(tmp_path / "v", vecs)
    with VectorStore.open(tmp_path / "v") as store:
        st = store._live()
        links = store._links(st)
        assert links is not None and st.quantizer is not None
        graph_query = st.quantizer.prepare_queries(vecs[7:8])[0][0]
        shown, _ = store._walk_links(st, links, graph_query, 32)
        hidden, _ = store._walk_links(st, links, graph_query, 32, hidden=7)
    assert 7 in shown  # the query is the vector of slot 7: it is its own best match
    assert 7 not in hidden and len(hidden) == 32


def _spectrum(n: int, power: float, seed: int) -> np.ndarray:
    """Unit vectors sharing a mean direction, coordinate i of their spread scaled by i^-power."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32) * (np.arange(1, DIM + 1) ** -power).astype(
        np.float32
    )
    vecs[:, 0] += 2.0
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def test_each_store_chooses_its_own_default_ef_and_readers_use_it(tmp_path: Path) -> None:
    steep = _spectrum(3000, 1.0, seed=2)  # the head holds nearly all of each vector: a short walk will do
    flat = _spectrum(3000, 0.25, seed=2)  # spread over every dimension: the walk must go far
    _saved(tmp_path / "steep", steep)
    _saved(tmp_path / "flat", flat)
    chosen = {}
    for name, vecs in (("steep", steep), ("flat", flat)):
        manifest = json.loads((tmp_path / name / MANIFEST).read_text())["body"]
        with VectorStore.open(tmp_path / name) as store:
            stats = store.stats()
            assert stats["tuning"] == manifest["tuning"] == fileformat.saved_stats(tmp_path / name)["tuning"]
            chosen[name] = stats["tuning"]["ef"]
            assert store.default_ef() == chosen[name] == stats["default_ef"]
            assert store.default_ef(k=30) == -(-chosen[name] * 30 // tuning.K)  # per 10 results
            assert stats["tuning"]["recall"] >= (tuning.TARGET if name == "steep" else 0.98)  # flat: near it
            queries = _spectrum(100, 1.0 if name == "steep" else 0.25, seed=9)  # new draws, as new photos
            found, _ = store.search(queries, 10)
        assert _recall(found, queries, vecs) >= 0.97
    assert chosen["steep"] <= chosen["flat"] / 4


def test_near_duplicate_clusters_get_a_deeper_exact_re_score(tmp_path: Path) -> None:
    # 6 clusters of 500 near-identical vectors: neighbours differ mostly outside the 15-dim head, so the
    # head scores cannot rank a walk's candidates and re-scoring the default 48 exactly tops out below
    vecs = _clusters(3000, 6, 0.15, seed=2)
    _saved(tmp_path / "v", vecs)
    with VectorStore.open(tmp_path / "v") as store:
        chosen = store.stats()["tuning"]
        assert chosen["rescore"] > tuning.RESCORES[0] and chosen["recall"] >= tuning.TARGET
        queries = _clusters(3100, 6, 0.15, seed=2)[3000:]  # the same clusters, new draws
        found, _ = store.search(queries, 10)
        st = store._live()
        links = store._links(st)
        assert links is not None and st.quantizer is not None
        cands, image_like = np.full(len(queries), chosen["ef"]), np.zeros(len(queries), dtype=bool)
        prepared = st.quantizer.prepare_queries(queries)
        shallow = store._compiled_search(
            st, links, queries, prepared, 10, cands, image_like, rescore=tuning.RESCORES[0]
        )
        assert shallow is not None
    assert _recall(found, queries, vecs) >= 0.98 > _recall(shallow[0], queries, vecs)


def test_a_store_keeps_its_choice_near_its_size_and_chooses_again_past_retune(tmp_path: Path) -> None:
    vecs = _clusters(4000, 10, 0.6, seed=4)
    folder = tmp_path / "v"
    with VectorStore.create(folder, DIM, PARAMS) as store:
        store.add(np.arange(2400), vecs[:2400])
        store.save()
        first = store.stats()["tuning"]
        store.add(np.arange(2400, 2800), vecs[2400:2800])  # within RETUNE of 2400
        store.save()
        assert store.stats()["tuning"] == first
        store.add(np.arange(2800, 4000), vecs[2800:])
        store.save()
        again = store.stats()["tuning"]
    assert first["n_alive"] == 2400 and again["n_alive"] == 4000


def test_without_tuning_or_with_a_malformed_entry_the_default_is_ef_search(tmp_path: Path) -> None:
    vecs = _clusters(3000, 8, 0.5, seed=5)
    _saved(
        tmp_path / "off",
        vecs,
        StoreParams(graph_dims=16, m=8, ef_construction=100, ef_search=77, tune_ef=False),
    )
    with VectorStore.open(tmp_path / "off") as store:
        assert store.stats()["tuning"] is None and store.default_ef() == 77
    _saved(tmp_path / "bad", vecs)
    manifest = json.loads((tmp_path / "bad" / MANIFEST).read_text())["body"]
    read = tuning.Tuning.from_dict(manifest["tuning"])
    assert read is not None
    depth = "every candidate" if read.rescore >= read.ef else str(read.rescore)
    assert read.describe().startswith(f"ef {read.ef}, {depth} re-scored exactly")
    for broken in ({"ef": "many"}, {**manifest["tuning"], "ef": 0}, [1, 2], None):
        assert tuning.Tuning.from_dict(broken) is None


def test_a_store_whose_walk_falls_short_at_every_ef_scans_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "LADDER", (16, 24))  # as though ef 24 were the top rung
    vecs = _spectrum(3000, 0.25, seed=6)  # needs an ef in the hundreds (above)
    _saved(tmp_path / "v", vecs)
    scans = []
    real = scan.all_scores
    monkeypatch.setattr(scan, "all_scores", lambda *a: scans.append(1) or real(*a))
    with VectorStore.open(tmp_path / "v") as store:
        chosen = store.stats()["tuning"]
        assert chosen["scan"] and chosen["ef"] == 24 and chosen["recall"] >= 0.98
        described = tuning.Tuning.from_dict(chosen).describe()  # `retrieval stats` says what searches do
        assert described.startswith("a scan of every slot") and "ef" not in described
        queries = _spectrum(50, 0.25, seed=7)
        found, _ = store.search(queries, 10)
        assert len(scans) == len(queries)
        walked, _ = store.search(queries, 10, ef=24)  # an ef of its own: the walk answers
        assert len(scans) == len(queries)
    assert _recall(found, queries, vecs) >= 0.98 > _recall(walked, queries, vecs)

"""Concurrent text queries share forwards of the text tower: the batcher alone, then through the engine."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support.photos import draw_photo

from retrieval.engine import Engine
from retrieval.errors import QueryError, UsageError
from retrieval.search import batching
from retrieval.search.batching import MAX_WINDOW_S, TextBatcher


def vector_of(text: str) -> np.ndarray:
    """A made-up embedding that tells texts apart."""
    return np.array([len(text), sum(map(ord, text))], dtype=np.float32)


class Model:
    """A stand-in forward: records each call's texts; the first call can be held until released."""

    def __init__(self, *, hold_first: bool = False, refuse: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.refuse = refuse

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.release.wait(60)
        if self.refuse is not None and self.refuse in texts:
            raise QueryError(f"cannot embed {self.refuse!r}")
        return np.stack([vector_of(t) for t in texts]) if texts else np.zeros((0, 2), np.float32)


def until(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Wait for another thread to get somewhere (a synchronisation, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the other threads never got there"
        time.sleep(0.002)


def start(batcher: TextBatcher, texts: list[str]) -> tuple[threading.Thread, dict[str, object]]:
    """Embed `texts` on a thread of its own; the outcome (rows or error) lands in the returned dict."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["rows"] = batcher.embed(texts)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def behind_a_forward(
    batcher: TextBatcher, model: Model, requests: list[list[str]]
) -> list[dict[str, object]]:
    """Hold a first forward ("first"), queue `requests` behind it, each on its own thread, then let all run:
    the outcome of each request."""
    first = start(batcher, ["first"])
    model.entered.wait(60)
    others = [start(batcher, texts) for texts in requests]
    until(lambda: batcher.queued() == sum(map(len, requests)))
    model.release.set()
    for thread, _ in [first, *others]:
        thread.join(60)
    return [outcome for _, outcome in others]


def test_texts_that_arrive_while_a_forward_runs_share_the_next_forward_and_each_gets_its_rows():
    model = Model(hold_first=True)
    batcher = TextBatcher(model, window=0)
    texts = [["a dog"], ["a cat", "minus this"], ["sea"], ["snowy mountains"]]
    outcomes = behind_a_forward(batcher, model, texts)
    assert model.calls == [["first"], ["a dog", "a cat", "minus this", "sea", "snowy mountains"]]
    for asked, outcome in zip(texts, outcomes, strict=True):
        np.testing.assert_array_equal(outcome["rows"], np.stack([vector_of(t) for t in asked]))
    assert batcher.stats.forwards == 2 and batcher.stats.sizes == [1, 5]


def test_a_shared_forward_takes_at_most_max_batch_texts_and_the_rest_go_in_the_next():
    model = Model(hold_first=True)
    batcher = TextBatcher(model, max_batch=3, window=0)
    outcomes = behind_a_forward(batcher, model, [[f"q{i}"] for i in range(5)])
    assert [len(call) for call in model.calls] == [1, 3, 2]
    assert all("rows" in outcome for outcome in outcomes)


def test_a_lone_query_never_waits_for_the_window():
    model = Model()
    batcher = TextBatcher(model, window=MAX_WINDOW_S)
    for text in ["sea", "a red square", "cat"]:
        np.testing.assert_array_equal(batcher.embed([text]), vector_of(text)[None])
    assert batcher.stats.waits == 0
    assert model.calls == [["sea"], ["a red square"], ["cat"]]


def test_after_shared_forwards_a_leader_waits_for_the_window(monkeypatch):
    monkeypatch.setattr(batching, "RECENT_S", 3600.0)  # the shared forward below counts as recent
    model = Model(hold_first=True)
    batcher = TextBatcher(model, window=0.001)
    behind_a_forward(batcher, model, [[f"q{i}"] for i in range(3)])
    assert batcher.stats.waits == 0  # neither forward had shared ones before it
    batcher.embed(["alone now"])
    assert batcher.stats.waits == 1  # three came together last time: it waited for company
    assert model.calls[-1] == ["alone now"]


def test_a_text_the_model_refuses_fails_alone_and_the_others_of_its_batch_get_their_rows():
    model = Model(hold_first=True, refuse="poison")
    batcher = TextBatcher(model, window=0)
    dog, poison, sea = behind_a_forward(batcher, model, [["a dog"], ["poison"], ["sea", "sky"]])
    assert isinstance(poison["error"], QueryError) and "poison" in str(poison["error"])
    np.testing.assert_array_equal(dog["rows"], vector_of("a dog")[None])
    np.testing.assert_array_equal(sea["rows"], np.stack([vector_of("sea"), vector_of("sky")]))
    # The shared forward failed, then each request of its batch ran alone.
    assert model.calls[1:] == [["a dog", "poison", "sea", "sky"], ["a dog"], ["poison"], ["sea", "sky"]]


def test_with_batching_off_every_query_runs_its_own_forward():
    model = Model(hold_first=True)
    batcher = TextBatcher(model, max_batch=1)
    threads = [start(batcher, [f"q{i}"]) for i in range(4)]
    until(lambda: len(model.calls) == 4)  # all four are in the model at once: nobody queued
    model.release.set()
    for thread, _ in threads:
        thread.join(60)
    assert sorted(len(call) for call in model.calls) == [1, 1, 1, 1]
    assert not batcher.enabled


def test_closing_fails_the_queued_texts_refuses_new_ones_and_lets_the_running_forward_finish():
    model = Model(hold_first=True)
    batcher = TextBatcher(model, window=0)
    first = start(batcher, ["first"])
    model.entered.wait(60)
    queued = [start(batcher, [f"q{i}"]) for i in range(2)]
    until(lambda: batcher.queued() == 2)
    batcher.close()
    for thread, outcome in queued:
        thread.join(60)
        assert isinstance(outcome["error"], UsageError) and "closed" in str(outcome["error"])
    model.release.set()
    first[0].join(60)
    np.testing.assert_array_equal(first[1]["rows"], vector_of("first")[None])
    with pytest.raises(UsageError, match="closed"):
        batcher.embed(["late"])
    assert model.calls == [["first"]]


@pytest.mark.parametrize(("batch", "window"), [(0, 0.0), (32, -0.001), (32, 1.0)])
def test_a_batch_below_one_or_a_window_outside_its_bounds_is_refused(batch, window):
    with pytest.raises(UsageError, match="text batching"):
        TextBatcher(Model(), max_batch=batch, window=window)


# -- through the engine, on a random tiny CLIP ---------------------------------------------------------------

QUERIES = ["sea", "a red square", "mountains at dusk", "cat", "a dog on the beach", "fireworks"]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny random CLIP index of 12 drawn photos: (home, name)."""
    root = tmp_path_factory.mktemp("batching")
    (root / "photos").mkdir()
    for i in range(12):
        draw_photo(i).save(root / "photos" / f"photo{i:03d}.jpg", quality=90)
    with open_engine(root / "home") as engine:
        engine.ingest(root / "photos")
    return root / "home", "clip"


def open_engine(home: Path, **kwargs: object) -> Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        engine = Engine(
            "clip",
            home=home,
            model="clip:tiny-test",
            pretrained=None,
            device="cpu",
            **kwargs,  # type: ignore[arg-type]
        )
        engine.embedder  # noqa: B018
    return engine


@pytest.fixture
def engine(index: tuple[Path, str]) -> Iterator[Engine]:
    with open_engine(index[0]) as opened:
        yield opened


def spy_forwards(engine: Engine, monkeypatch: pytest.MonkeyPatch, hold_until_queued: int) -> list[list[str]]:
    """Record the texts of each forward of the engine's text tower; the first one is held until
    `hold_until_queued` texts are waiting for the next, so that they are sure to share it."""
    calls: list[list[str]] = []
    real = engine.embedder.embed_texts

    def spy(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        if len(calls) == 1:
            until(lambda: engine.text_batcher.queued() >= hold_until_queued)
        if "poison" in texts:
            raise QueryError("the model cannot take 'poison'")
        return real(texts)

    monkeypatch.setattr(engine.embedder, "embed_texts", spy)
    return calls


def ranked(hits: list) -> list[tuple[int, str]]:
    return [(h.id, h.path) for h in hits]


def test_concurrent_text_searches_give_the_sequential_results_in_fewer_forwards_than_queries(
    engine, monkeypatch
):
    expected = {q: engine.search_text(q, k=5) for q in QUERIES}
    n = 12
    calls = spy_forwards(engine, monkeypatch, hold_until_queued=n - 1)
    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(lambda i: engine.search_text(QUERIES[i % len(QUERIES)], k=5), range(n)))
    for i, hits in enumerate(got):
        want = expected[QUERIES[i % len(QUERIES)]]
        assert ranked(hits) == ranked(want)
        # One forward of many texts rounds differently from one of a single text, in the 7th digit.
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], atol=1e-5)
    assert sum(map(len, calls)) == n
    assert len(calls) == 2  # the first alone, the eleven that queued behind it together


def test_an_empty_text_query_among_concurrent_ones_fails_alone(engine):
    expected = {q: ranked(engine.search_text(q, k=5)) for q in QUERIES}
    asked = [*QUERIES[:3], "   ", *QUERIES[3:]]

    def search(text: str) -> list[tuple[int, str]] | Exception:
        try:
            return ranked(engine.search_text(text, k=5))
        except QueryError as exc:
            return exc

    with ThreadPoolExecutor(len(asked)) as pool:
        got = dict(zip(asked, pool.map(search, asked), strict=True))
    assert isinstance(got.pop("   "), QueryError)
    assert got == expected


def test_a_query_the_model_refuses_in_a_shared_forward_fails_alone(engine, monkeypatch):
    expected = {q: ranked(engine.search_text(q, k=5)) for q in QUERIES}
    calls = spy_forwards(engine, monkeypatch, hold_until_queued=len(QUERIES))
    outcomes: dict[str, object] = {}

    def search(text: str) -> None:
        try:
            outcomes[text] = ranked(engine.search_text(text, k=5))
        except QueryError as exc:
            outcomes[text] = exc

    leader = threading.Thread(target=search, args=("first query",))
    leader.start()
    until(lambda: len(calls) == 1)  # the leader's forward is held: all below queue behind it
    with ThreadPoolExecutor(len(QUERIES)) as pool:
        list(pool.map(search, [*QUERIES[:2], "poison", *QUERIES[2:-1]]))
    leader.join(60)
    assert isinstance(outcomes.pop("poison"), QueryError)
    assert outcomes.pop("first query")
    assert outcomes == {q: expected[q] for q in QUERIES[:-1]}
    assert "poison" in calls[1] and len(calls[1]) == len(QUERIES)  # it was in the shared forward


def test_a_lone_text_search_does_not_wait_for_the_window(index):
    with open_engine(index[0], text_batch_window=MAX_WINDOW_S) as engine:
        for query in QUERIES:
            assert engine.search_text(query, k=3)
        stats = engine.text_batcher.stats
        assert stats.waits == 0
        assert stats.sizes[-len(QUERIES) :] == [1] * len(QUERIES)


def test_batching_is_off_with_a_batch_of_one_from_the_environment(index, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_TEXT_BATCH", "1")
    with open_engine(index[0]) as engine:
        assert not engine.text_batcher.enabled
        assert engine.search_text("sea", k=3)
    monkeypatch.setenv("RETRIEVAL_TEXT_BATCH", "many")
    with pytest.raises(UsageError, match="RETRIEVAL_TEXT_BATCH"):
        open_engine(index[0])

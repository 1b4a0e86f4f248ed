"""Ingests in a real child process, killed (SIGKILL), interrupted (SIGINT) and run against other users.

Children run the real command line through tests/support/ingest_child.py, which logs progress and checkpoints
so that each kill lands at a chosen point, read from what the child has done rather than from a clock.
They are forked from a forkserver that has imported retrieval once: a fresh interpreter per child
would cost seconds of imports each.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from retrieval_cli.main import app
from support.children import Child
from support.index_checks import assert_consistent, assert_repairable, read_state
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.ingest.pipeline import Ingestor
from retrieval.metadata import DB_NAME, MetadataStore

N = 120
EVERY = 12  # files per checkpoint in the children: the first comes at 10 %
pytestmark = pytest.mark.slow  # child processes killed and interrupted


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(N):
        paths.append(folder / f"p{i:03d}.jpg")
        draw_photo(i, size=(64, 48)).save(paths[-1], quality=85)
    return paths


@pytest.fixture(autouse=True)
def ctrl_c_is_delivered() -> Iterator[None]:
    """A test run started as a background job (`cmd &` in a script, nohup) has SIGINT ignored, and so would
    the children forked from it: give this module the interactive default the tests are about."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ingest_args(photos: list[Path], home: Path, index: str) -> list[str]:
    folder = str(photos[0].parent)
    return ["ingest", folder, "--home", str(home), "--index", index, "--model", "classic", "--no-progress"]


def done(line: str) -> int:
    """DONE of a "progress ingest DONE TOTAL" line, -1 for other lines."""
    parts = line.split()
    return int(parts[2]) if parts[:2] == ["progress", "ingest"] else -1


def total(child: Child) -> int:
    return int(child.wait_for(lambda line: done(line) == 0).split()[3])


def test_killed_ingests_leave_a_consistent_index_and_the_rerun_does_only_the_rest(photos, home, tmp_path):
    args, index = ingest_args(photos, home, "killed"), home / "killed"
    children: list[Child] = []

    def child(**options: object) -> Child:
        children.append(Child(tmp_path / f"child{len(children)}.log", args, every=EVERY, **options))
        return children[-1]

    try:
        # 1. Killed just after its first checkpoint, at 10 %.
        first = child(delay=0.005)
        first.wait_for(lambda line: line == "checkpoint 1")
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL
        saved = assert_repairable(index).embedded
        assert len(saved) >= EVERY
        with Engine("killed") as reader:  # what was saved is searchable at once
            assert reader.search_image(photos[0], k=1)[0].path == str(photos[0])

        # 2. The rerun has only the rest to do; killed at 50 % of the whole.
        second = child(delay=0.005)
        assert total(second) == N - len(saved)
        second.wait_for(lambda line: done(line) >= N // 2 - len(saved))
        second.signal(signal.SIGKILL)
        saved = assert_repairable(index).embedded
        assert len(saved) >= N // 2 - EVERY

        # 3. Killed while saving vectors: every file of the new generation written, the pointer not switched.
        third = child(pause="manifest")
        assert total(third) == N - len(saved)
        third.wait_for(lambda line: line == "paused manifest")
        third.signal(signal.SIGKILL)
        state = assert_repairable(index)
        assert state.consistent and state.embedded == saved  # the old generation and old rows: nothing lost

        # 4. Killed between saving vectors and committing their rows: vectors without rows are left over.
        fourth = child(pause="commit")
        fourth.wait_for(lambda line: line == "paused commit")
        fourth.signal(signal.SIGKILL)
        state = assert_repairable(index)
        assert state.embedded == saved and len(state.vectors) == len(saved) + EVERY
        with Engine("killed") as reader:
            hit = reader.search_image(photos[0], k=1)[0]
            assert hit.path == str(photos[0]) and hit.score > 0.999
    finally:
        for c in children:
            c.stop()

    # 5. The last run repairs what the kills left and finishes without redoing what was saved.
    with Engine("killed") as engine:
        report = engine.ingest(photos[0].parent)
    assert (report.embedded, report.unchanged, report.failed) == (N - len(saved), len(saved), [])
    assert_consistent(index, files=N)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_cleanly_having_saved_what_was_done(photos, home, tmp_path, stop):
    child = Child(tmp_path / "child.log", ingest_args(photos, home, "interrupted"), every=10_000, delay=0.005)
    try:
        child.wait_for(lambda line: done(line) >= N // 2)
        assert child.signal(stop) == 130
    finally:
        child.stop()
    lines = child.lines()
    assert not any("Traceback" in line for line in lines)
    last = max(done(line) for line in lines)
    assert N // 2 <= last < N
    # One line says what was saved: every file recorded before the stop.
    (summary,) = [line for line in lines if line.startswith("interrupted")]
    assert f": saved {last} files ({last} embedded, 0 linked" in summary
    assert summary.endswith("; run the same command to finish")
    # No checkpoint came before the interrupt: the stop itself saved every file it had finished.
    assert_consistent(home / "interrupted", files=last)
    with Engine("interrupted") as engine:
        report = engine.ingest(photos[0].parent)
    assert (report.embedded, report.unchanged) == (N - last, last)
    assert_consistent(home / "interrupted", files=N)


def test_during_an_ingest_a_second_writer_is_refused_and_searches_see_whole_versions(photos, home, tmp_path):
    index = home / "shared"
    child = Child(tmp_path / "child.log", ingest_args(photos, home, "shared"), every=EVERY, delay=0.005)
    try:
        child.wait_for(lambda line: line == "checkpoint 1")
        busy = CliRunner().invoke(app, ingest_args(photos, home, "shared"))
        assert busy.exit_code == 5, busy.output
        assert busy.output.count("\n") == 1 and "is busy: another process is writing to it" in busy.output

        versions = set()
        while child.process.is_alive():
            with MetadataStore(index / DB_NAME, migrate=False) as meta:
                committed = meta.embedded_ids()  # read before the vectors: vectors are saved first
            with Engine("shared") as reader:
                stored = {int(i) for i in reader.store.ids()}
                assert committed <= stored, "the database names vectors the store it opened does not hold"
                query = photos[len(versions) % EVERY]
                hit = reader.search_image(query, k=1)[0]
                assert hit.path == str(query) and hit.score > 0.999
                versions.add(reader.store.generation)
        assert child.finish() == 0, "\n".join(child.lines()[-20:])
    finally:
        child.stop()
    assert len(versions) >= 3  # the readers really ran across several saves
    state = assert_consistent(index, files=N)
    assert len(read_state(index).vectors) == len(state.embedded) == N


def test_ctrl_c_in_the_middle_of_a_file_takes_effect_once_that_file_is_recorded(
    make_photos, home, monkeypatch
):
    paths = make_photos(8)
    record = Ingestor._apply
    calls = []

    def interrupted_while_recording(self: Ingestor, *args: object) -> None:
        calls.append(args)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next bytecode
        record(self, *args)

    monkeypatch.setattr(Ingestor, "_apply", interrupted_while_recording)
    with Engine(model="classic") as engine, pytest.raises(KeyboardInterrupt):
        engine.ingest(paths[0].parent)
    assert_consistent(home / "default", files=5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is itself again


def test_ten_kills_at_random_moments_each_leave_a_repairable_index_and_a_rerun_finishes(
    photos, home, tmp_path
):
    import random

    rng = random.Random(20261201)  # seeded: a failure names the moment it happened at
    args, index = ingest_args(photos, home, "kill-loop"), home / "kill-loop"
    embedded: set[int] = set()
    for round_ in range(10):
        child = Child(tmp_path / f"loop{round_}.log", args, every=EVERY, delay=0.002)
        try:
            todo = total(child)
            if todo == 0:
                break
            target = rng.randrange(0, todo)
            child.wait_for(lambda line, t=target: done(line) >= t)
            time.sleep(rng.uniform(0, 0.02))  # anywhere between two files, inside a save or a commit
            child.signal(signal.SIGKILL)
        finally:
            child.stop()
        state = assert_repairable(index)
        assert state.embedded >= embedded, f"round {round_}: a kill lost work already saved"
        embedded = state.embedded
    with Engine("kill-loop") as engine:
        report = engine.ingest(photos[0].parent)
    assert report.failed == [] and report.embedded == N - len(embedded)
    assert_consistent(index, files=N)

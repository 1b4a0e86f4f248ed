"""Watch mode: a watched folder's changes reach the index in debounced batches, a folder that goes away is
waited for (its files kept), Ctrl-C stops cleanly, and `serve --watch` serves what the watcher adds."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from retrieval_cli.main import app
from support.children import Child
from support.index_checks import assert_consistent
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import UsageError
from retrieval.files.discovery import FOLDER_NOT_READABLE, Skipped
from retrieval.ingest import pipeline
from retrieval.ingest import watch as watch_module
from retrieval.ingest.watch import WatchBatch, Watcher, network_filesystem
from retrieval.metadata import DB_NAME, MetadataStore

#: Small debounce values: a test's batch starts a fraction of a second after its last change.
FAST = {"quiet": 0.3, "max_delay": 10.0, "poll_interval": 0.2}


def save_photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_photo(seed).save(path, quality=90)
    return path


def indexed(home: Path, index: str = "default") -> dict[str, str]:
    """Path -> content hash of every indexed file, read from the database as it is now."""
    with MetadataStore(home / index / DB_NAME, migrate=False) as meta:
        ids = meta.embedded_ids()
        hashes = meta.content_hashes(ids)
        return {path: hashes[i] for i, paths in meta.paths_of(ids).items() for path in paths}


def wait_until(condition: Callable[[], bool], log: list[WatchBatch], timeout: float = 60.0) -> None:
    """Wait for the watcher to bring `condition` about (a guard against a hang, not a timed assert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail("the watcher did not get there; its log:\n" + "\n".join(map(repr, log)))


def ingests(log: list[WatchBatch], kind: str = "changes") -> list[WatchBatch]:
    return [b for b in log if b.kind == kind and b.report is not None]


@pytest.fixture
def watched(
    tmp_path: Path, home: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, list[WatchBatch]]]:
    """A folder of three photos under watch (the first catch-up done) and the watcher's log; a test's
    `watch_options` marker overrides FAST."""
    folder = tmp_path / "photos"
    for i in range(3):
        save_photo(folder / f"p{i}.jpg", i)
    log: list[WatchBatch] = []
    marker = request.node.get_closest_marker("watch_options")
    options = {**FAST, **(marker.kwargs if marker else {})}
    with Engine(model="classic") as writer, writer.watching(folder, on_batch=log.append, **options):
        wait_until(lambda: len(ingests(log, "catch-up")) == 1, log)
        yield folder, log


def test_files_added_changed_moved_and_deleted_while_watching_are_reflected_in_the_index(watched, home):
    folder, log = watched
    assert set(indexed(home)) == {str(folder / f"p{i}.jpg") for i in range(3)}

    save_photo(folder / "new" / "added.jpg", 10)
    wait_until(lambda: str(folder / "new" / "added.jpg") in indexed(home), log)

    before = indexed(home)[str(folder / "p0.jpg")]
    save_photo(folder / "p0.jpg", 11)  # edited in place
    # (A batch that catches the file half-written records it failed; the rest of the write sets off another.)
    wait_until(lambda: indexed(home).get(str(folder / "p0.jpg"), before) != before, log)

    moved_hash = indexed(home)[str(folder / "p1.jpg")]
    os.rename(folder / "p1.jpg", folder / "new" / "moved.jpg")
    wait_until(lambda: str(folder / "p1.jpg") not in indexed(home), log)
    assert indexed(home)[str(folder / "new" / "moved.jpg")] == moved_hash  # the same image, not re-embedded

    (folder / "p2.jpg").unlink()
    wait_until(lambda: str(folder / "p2.jpg") not in indexed(home), log)

    expected = {str(folder / n) for n in ("p0.jpg", "new/added.jpg", "new/moved.jpg")}
    assert set(indexed(home)) == expected
    assert_consistent(home / "default", files=3)
    with Engine() as reader:  # the edited photo is searchable as it is now
        hit = reader.search_image(folder / "p0.jpg", k=1)[0]
        assert hit.path == str(folder / "p0.jpg") and hit.score > 0.999
    moves = [b.report for b in ingests(log) if b.report is not None and b.report.removed]
    assert moves[0].linked == 1 and moves[0].embedded == 0


@pytest.mark.watch_options(quiet=1.5)  # longer than any pause between two copies on a busy machine
def test_a_burst_of_new_files_is_ingested_as_one_batch(watched, home, tmp_path):
    folder, log = watched
    burst = {
        f"IMG_{i:04d}.jpg": save_photo(tmp_path / "card" / f"{i}.jpg", 100 + i).read_bytes()
        for i in range(40)
    }
    for name, data in burst.items():  # a camera import: one file after another
        (folder / name).write_bytes(data)
    # the index shows an ingest's files before the watcher reports it: wait for both
    wait_until(lambda: len(indexed(home)) == 43 and bool(ingests(log)), log)
    changes = ingests(log)
    assert len(changes) == 1, changes
    assert changes[0].report is not None and changes[0].report.added == 40
    assert changes[0].events >= 40


def test_the_watcher_waits_for_a_folder_that_went_away_and_keeps_its_files(watched, home):
    folder, log = watched
    away = folder.with_name("unmounted")
    os.rename(folder, away)
    wait_until(lambda: any(b.kind == "waiting" for b in log), log)
    assert len(indexed(home)) == 3  # not taken as three files deleted

    save_photo(away / "while-away.jpg", 20)
    os.rename(away, folder)  # mounted again
    wait_until(
        lambda: str(folder / "while-away.jpg") in indexed(home) and len(ingests(log, "catch-up")) == 2, log
    )
    assert [b.kind for b in log if b.report is None] == ["waiting", "back"]
    back = ingests(log, "catch-up")[-1].report
    assert back is not None and back.unchanged == 3 and back.added == 1  # a rescan: no event named it
    assert len(indexed(home)) == 4

    # An empty folder where an indexed one was (a mount point without its disk) is not taken for deletions.
    os.rename(folder, away)
    folder.mkdir()
    wait_until(lambda: sum(b.kind == "waiting" for b in log) == 2, log)
    note = [b.note for b in log if b.kind == "waiting"][-1]
    assert note is not None and "empty but the index holds 4 files" in note
    assert len(indexed(home)) == 4
    assert_consistent(home / "default", files=4)


def test_watch_batches_ingest_only_the_paths_their_events_name(watched, home, tmp_path, monkeypatch):
    folder, log = watched
    listed: list[Path] = []  # the folders an ingest listed: never the whole watched folder again
    discover = pipeline.discover
    monkeypatch.setattr(
        pipeline, "discover", lambda root, **kw: (listed.append(Path(root)), discover(root, **kw))[1]
    )

    save_photo(folder / "one.jpg", 30)
    wait_until(lambda: str(folder / "one.jpg") in indexed(home) and bool(ingests(log)), log)
    first = ingests(log)[0].report
    assert first is not None and first.added == 1 and first.unchanged == 0  # p0..p2 were not looked at

    save_photo(tmp_path / "card" / "a.jpg", 31)
    save_photo(tmp_path / "card" / "deep" / "b.jpg", 32)
    (tmp_path / "card" / "notes.txt").write_text("not a photo")
    shutil.copytree(tmp_path / "card", folder / "card")  # a folder with photos in it appears
    wait_until(
        lambda: {str(folder / "card/a.jpg"), str(folder / "card/deep/b.jpg")} <= set(indexed(home)), log
    )

    os.rename(folder / "card", folder / "trip")  # a folder moved: its files follow by path
    wait_until(lambda: not any("/card/" in p for p in indexed(home)), log)
    assert {str(folder / "trip/a.jpg"), str(folder / "trip/deep/b.jpg")} <= set(indexed(home))
    os.rename(folder / "one.jpg", folder / "trip" / "one.jpg")  # a file moved
    (folder / "p2.jpg").unlink()  # a file deleted
    wait_until(
        lambda: str(folder / "p2.jpg") not in indexed(home) and str(folder / "one.jpg") not in indexed(home),
        log,
    )
    shutil.rmtree(folder / "trip" / "deep")  # a folder deleted: the files under it go
    wait_until(lambda: str(folder / "trip/deep/b.jpg") not in indexed(home), log)

    expected = {str(folder / n) for n in ("p0.jpg", "p1.jpg", "trip/a.jpg", "trip/one.jpg")}
    assert set(indexed(home)) == expected
    assert folder not in listed and folder.resolve() not in listed
    assert all(b.report is not None and b.report.unchanged < 3 for b in ingests(log))
    assert_consistent(home / "default", files=4)


def test_an_ingest_of_named_paths_leaves_the_index_as_a_rescan_would(tmp_path, home):
    folder = tmp_path / "photos"
    for i in range(4):
        save_photo(folder / "old" / f"p{i}.jpg", i)
    save_photo(folder / "keep.jpg", 9)
    outside = save_photo(tmp_path / "outside.jpg", 8)
    with Engine(model="classic") as engine:
        engine.ingest(folder)
        save_photo(folder / "new.jpg", 10)
        save_photo(folder / "card" / "a.jpg", 11)
        save_photo(folder / "card" / "deep" / "b.jpg", 12)
        (folder / "card" / "notes.txt").write_text("not a photo")
        (folder / "link.jpg").symlink_to(outside)
        os.rename(folder / "old" / "p0.jpg", folder / "moved.jpg")
        (folder / "old" / "p1.jpg").unlink()
        os.rename(folder / "old", tmp_path / "elsewhere")  # p2, p3 gone with their folder
        named = ["new.jpg", "card", "card/a.jpg", "moved.jpg", "old/p0.jpg", "old/p1.jpg", "old", "link.jpg"]
        report = engine.ingest(folder, paths=[folder / n for n in named] + [outside])

        assert report.unchanged == 0  # keep.jpg was not looked at; outside.jpg is not the folder's
        assert (report.added, report.removed, report.linked, report.unsupported) == (4, 4, 1, 1)
        assert [p for p, _ in report.skipped] == [str(folder / "link.jpg")]
        rows = indexed(home)
        rescan = engine.ingest(folder)
    assert (rescan.added, rescan.updated, rescan.removed, rescan.unchanged) == (0, 0, 0, 5)
    assert indexed(home) == rows
    assert set(rows) == {
        str(folder / n) for n in ("keep.jpg", "new.jpg", "moved.jpg", "card/a.jpg", "card/deep/b.jpg")
    }
    assert_consistent(home / "default", files=5)


def test_an_inotify_overflow_or_a_batch_of_too_many_paths_rescans_the_folder(tmp_path, monkeypatch):
    watcher = Watcher(
        tmp_path,
        lambda _p: None,  # type: ignore[arg-type,return-value]
        ingest_paths=lambda _p, _n: None,  # type: ignore[arg-type,return-value]
        indexed_files=lambda: 0,
        quiet=0,
        max_delay=0,
    )
    watcher._start_observer()
    try:
        a, b, c = (str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg"))
        watcher._event([a], False, "created")
        watcher._event([b, c], False, "moved")
        watcher._event([str(tmp_path / "notes.txt")], False, "created")  # not an image: no event
        assert watcher._next_batch() == 2 and watcher._taken == [a, b, c]

        watcher._event([a], False, "modified")
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; events were lost"
        )
        assert watcher._next_batch() == 2 and watcher._taken is None

        monkeypatch.setattr(watch_module, "RESCAN_ABOVE", 2)
        watcher._event([a], False, "created")
        watcher._event([b, c], False, "moved")
        assert watcher._next_batch() == 2 and watcher._taken is None
        watcher._event([str(tmp_path)], True, "created")  # an event naming the folder itself
        assert watcher._next_batch() == 1 and watcher._taken is None
    finally:
        watcher._stop_observer()


def test_an_ingest_that_cannot_list_its_folder_forgets_nothing(make_photos, home, monkeypatch):
    paths = make_photos(4)
    (paths[0].parent / "sub").mkdir()
    inside = save_photo(paths[0].parent / "sub" / "deep.jpg", 9)
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
    listed = pipeline.discover

    def sub_unreadable(root: Path) -> Iterator[object]:
        for item in listed(root):
            if getattr(item, "path", None) == inside:
                yield Skipped(inside.parent, f"{FOLDER_NOT_READABLE}: Input/output error")
            else:
                yield item

    def root_unreadable(root: Path) -> Iterator[object]:
        yield Skipped(root, f"{FOLDER_NOT_READABLE}: No such file or directory")

    with Engine() as engine:
        monkeypatch.setattr(pipeline, "discover", sub_unreadable)
        assert engine.ingest(paths[0].parent).removed == 0  # the sub-folder's file is kept
        monkeypatch.setattr(pipeline, "discover", root_unreadable)
        with pytest.raises(
            UsageError, match=r"cannot be listed \(No such file or directory\); nothing was changed"
        ):
            engine.ingest(paths[0].parent)
    assert len(indexed(home)) == 5


def test_a_watcher_stopped_mid_batch_saves_what_it_did_and_says_so(make_photos, home):
    paths = make_photos(6)
    log: list[WatchBatch] = []
    holder: list[Watcher] = []

    def stop_at_third(p: pipeline.IngestProgress) -> None:
        if p.phase == "ingest" and p.done == 3:
            holder[0].stop()

    with Engine(model="classic") as engine:
        holder.append(
            Watcher(
                paths[0].parent,
                lambda progress: engine.ingest(paths[0].parent, progress=progress, workers=1),
                indexed_files=lambda: 0,
                on_batch=log.append,
                progress=stop_at_third,
                **FAST,
            )
        )
        result = holder[0].run()
    assert result.interrupted and result.batches == 0
    assert [b.kind for b in log] == ["stopped"]
    assert_consistent(home / "default", files=3)


def test_watch_options_are_checked_and_network_mounts_are_told_apart(tmp_path):
    with pytest.raises(UsageError, match="quiet <= max_delay"):
        Watcher(tmp_path, lambda _p: None, indexed_files=lambda: 0, quiet=5, max_delay=1)  # type: ignore[arg-type,return-value]
    assert network_filesystem(tmp_path) is None  # a local temporary folder


def test_serve_with_watch_serves_a_photo_copied_into_the_folder_within_seconds(tmp_path, home, monkeypatch):
    """The CLI's `serve --watch` with uvicorn replaced by a client of the same app: a photo copied into the
    watched folder is found by an image search over HTTP."""
    from fastapi.testclient import TestClient

    folder = tmp_path / "photos"
    for i in range(3):
        save_photo(folder / f"p{i}.jpg", i)
    with Engine(model="classic") as engine:
        engine.ingest(folder)
    new = save_photo(tmp_path / "card" / "new.jpg", 42)
    seen: list[dict[str, object]] = []

    def serve(served: object, **_options: object) -> None:
        with TestClient(served, base_url="http://127.0.0.1:8000") as client:  # type: ignore[arg-type]
            shutil.copy(new, folder / "new.jpg")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                upload = {"image": ("q.jpg", new.read_bytes(), "image/jpeg")}
                top = client.post("/api/search/image", files=upload, params={"k": 1}).json()["results"][0]
                if top["score"] > 0.999:
                    seen.append(top)
                    return
                time.sleep(0.1)

    monkeypatch.setattr("uvicorn.run", serve)
    result = CliRunner().invoke(app, ["serve", "--watch", str(folder)])
    assert result.exit_code == 0, result.output
    assert seen and seen[0]["path"] == "new.jpg", result.output  # served relative to its folder
    assert "catch-up" in result.output  # the watcher's log lines


# -- Ctrl-C in a real process ------------------------------------------------------------------------------


@pytest.fixture
def ctrl_c_is_delivered() -> Iterator[None]:
    """SIGINT as in an interactive shell, even in a suite run as a background job (see test_interrupt)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def watch_args(folder: Path, home: Path) -> list[str]:
    return ["watch", str(folder), "--home", str(home), "--model", "classic", "--debounce", "0.2"]


@pytest.mark.slow
@pytest.mark.usefixtures("ctrl_c_is_delivered")
def test_ctrl_c_while_watching_stops_with_exit_0_and_mid_batch_with_130_having_saved_the_batch(
    make_photos, home, tmp_path
):
    paths = make_photos(30)
    idle = Child(tmp_path / "idle.log", watch_args(paths[0].parent, home), every=10_000)
    try:
        idle.wait_for(lambda line: " catch-up: " in line)
        assert idle.signal(signal.SIGINT) == 0
    finally:
        idle.stop()
    assert any(line == "stopped watching after 1 ingest" for line in idle.lines())
    assert not any("Traceback" in line for line in idle.lines())
    assert_consistent(home / "default", files=30)

    for i in range(30, 60):
        save_photo(paths[0].parent / f"later{i}.jpg", i)
    busy = Child(tmp_path / "busy.log", watch_args(paths[0].parent, home), every=10_000, delay=0.02)
    try:
        busy.wait_for(lambda line: line.startswith("progress ingest 10 30"))
        assert busy.signal(signal.SIGINT) == 130
    finally:
        busy.stop()
    lines = busy.lines()
    assert "interrupted: work done so far is saved; run the same command to finish" in lines
    assert not any("Traceback" in line for line in lines)
    done = max(int(line.split()[2]) for line in lines if line.startswith("progress ingest "))
    assert 10 <= done < 30
    assert_consistent(home / "default", files=30 + done)


@pytest.mark.slow
def test_sigterm_stops_a_watcher_as_ctrl_c_does_even_where_ctrl_c_is_ignored(make_photos, home, tmp_path):
    """systemd, `docker stop` and `kill` send SIGTERM, to a watcher often started with SIGINT ignored."""
    paths = make_photos(3)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a service or a `cmd &` in a script
    try:
        child = Child(tmp_path / "term.log", watch_args(paths[0].parent, home), every=10_000)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        child.wait_for(lambda line: " catch-up: " in line)
        assert child.signal(signal.SIGTERM) == 0
    finally:
        child.stop()
    assert "stopped watching after 1 ingest" in child.lines()
    assert_consistent(home / "default", files=3)

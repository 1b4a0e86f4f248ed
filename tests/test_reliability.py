"""Reliability: odd and broken files, damaged index files, a full disk.

Interruptions and concurrent use (SIGKILL, SIGINT, the write lock, searches during an ingest) are in
test_interrupt.py.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import sqlite3
import struct
import tracemalloc
import zlib
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from retrieval_cli.main import app
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from support.index_checks import assert_consistent
from support.photos import draw_photo
from typer.testing import CliRunner

import retrieval.ingest.pipeline as ingest_module
import retrieval.metadata.reader as reader_module
from retrieval.engine import Engine
from retrieval.errors import IndexCorruptError, IndexWriteError
from retrieval.files.decoding import ALPHA_BACKGROUND
from retrieval.vectors.hnsw import fileformat
from retrieval.vectors.hnsw.store import VectorStore

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ---- bad and odd inputs ---------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **params)
    return buffer.getvalue()


def write_broken_files(folder: Path) -> dict[str, str]:
    """Broken files, each with a word its failure reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg_bytes(draw_photo(50))[:900])
    (folder / "text.jpg").write_text("these are my holiday notes, not a photo\n")
    (folder / "bomb.png").write_bytes(png_declaring(30_000, 30_000))
    return {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image", "bomb.png": "bomb"}


def write_odd_valid_images(folder: Path, refs: Path) -> dict[str, Path]:
    """Valid images in unusual encodings; returns name -> a plain RGB reference of what must be embedded."""
    folder.mkdir(parents=True, exist_ok=True)
    refs.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Path] = {}

    def reference(name: str, image: Image.Image) -> None:
        expected[name] = refs / f"{Path(name).stem}.png"
        image.convert("RGB").save(expected[name])

    cmyk = draw_photo(60)
    (folder / "cmyk.jpg").write_bytes(jpeg_bytes(cmyk.convert("CMYK")))
    reference("cmyk.jpg", cmyk)

    grey = np.asarray(draw_photo(61).convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(folder / "deep.png")  # 16-bit greyscale, full range
    reference("deep.png", Image.fromarray(grey.astype(np.uint8)))

    palette = draw_photo(62).quantize(64)
    palette.save(folder / "palette.png", transparency=0)
    flat = Image.new("RGBA", palette.size, (*ALPHA_BACKGROUND, 255))
    with Image.open(folder / "palette.png") as saved:  # transparent shows mid-grey, as decoding does
        flat.alpha_composite(saved.convert("RGBA"))
    reference("palette.png", flat)

    first, second = draw_photo(63), draw_photo(64)
    first.save(folder / "animated.gif", save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(folder / "animated.gif") as gif:
        reference("animated.gif", gif.convert("RGB"))  # the first frame, in the GIF's own palette

    upright = draw_photo(65, size=(160, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif))
    reference("rotated.jpg", upright)
    return expected


def test_broken_files_are_failures_with_reasons_and_the_ingest_goes_on(make_photos, tmp_path):
    photos = make_photos(4)
    folder = photos[0].parent
    reasons = write_broken_files(folder)
    with Engine(model="classic") as engine:
        report = engine.ingest(folder)
        failed = dict(report.failed)
        assert set(failed) == {str(folder / name) for name in reasons}
        for name, word in reasons.items():
            assert word in failed[str(folder / name)], failed
        assert report.embedded == 4 and len(engine.store) == 4
        assert engine.meta.counts()["failures"] == 4


def test_odd_but_valid_images_are_embedded_as_they_look(tmp_path):
    folder = tmp_path / "odd"
    expected = write_odd_valid_images(folder, tmp_path / "refs")
    for i in range(6):  # some ordinary photos for the odd ones to be confused with
        draw_photo(i).save(folder / f"plain{i}.jpg", quality=90)
    with Engine(model="classic") as engine:
        report = engine.ingest(folder)
        assert report.failed == [] and report.embedded == 11
        for name, ref in expected.items():
            hits = engine.search_image(ref, k=2)
            assert hits[0].path == str(folder / name), (name, hits)
            assert hits[0].score > 0.97 and hits[0].score - hits[1].score > 0.02, (name, hits)
        rotated = engine.search_image(expected["rotated.jpg"], k=1)[0]
        assert (rotated.width, rotated.height) == (160, 120)  # the size as seen, not as stored
        sideways = tmp_path / "sideways.png"
        Image.open(expected["rotated.jpg"]).transpose(Image.Transpose.ROTATE_90).save(sideways)
        assert engine.search_image(sideways, k=11)[0].score < rotated.score - 0.02


def test_the_cli_lists_each_failure_and_exits_1(make_photos):
    folder = make_photos(2)[0].parent
    reasons = write_broken_files(folder)
    result = invoke("ingest", folder, "--model", "classic", "--no-progress")
    assert result.exit_code == 1, result.output
    assert f"{len(reasons)} failed" in result.output and "Traceback" not in result.output
    for name in reasons:
        assert f"failed: {folder / name}: " in result.output
    again = invoke("ingest", folder, "--no-progress")  # not retried, still reported
    assert again.exit_code == 1 and f"{len(reasons)} failed" in again.output


def test_a_file_above_the_size_limit_is_a_recorded_failure_and_is_never_opened(make_photos, monkeypatch):
    photos = make_photos(3)
    big = photos[0].parent / "panorama.jpg"
    big.write_bytes(jpeg_bytes(draw_photo(70)) + bytes(2 * 2**20))  # a photo, then 2 MB of padding
    monkeypatch.setenv("RETRIEVAL_MAX_FILE_MB", "1")
    opened: list[Path] = []
    real_open = Path.open

    def watched(self: Path, *args: object, **kwargs: object) -> object:
        if self == big:
            opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", watched)
    with Engine(model="classic") as engine:
        report = engine.ingest(photos[0].parent)
    [(path, reason)] = report.failed
    assert path == str(big) and "above the 1 MB limit" in reason and "$RETRIEVAL_MAX_FILE_MB" in reason
    assert report.embedded == 3 and opened == []


def test_ingest_hashes_a_file_as_a_stream_instead_of_reading_it_whole(make_photos):
    photos = make_photos(2)
    long = photos[0].parent / "long.jpg"
    with long.open("wb") as out:  # a photo, then 64 MB of (sparse) padding that the hash must read
        out.write(jpeg_bytes(draw_photo(71)))
        out.truncate(out.tell() + 64 * 2**20)
    with Engine(model="classic") as engine:
        tracemalloc.start()
        try:
            report = engine.ingest(photos[0].parent)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert report.failed == [] and report.embedded == 3
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MB held at once"  # read whole, it was 64 MB more


def test_an_unreadable_file_is_a_failure(make_photos, monkeypatch):
    photos = make_photos(3)
    victim = photos[1]
    victim.chmod(0)
    if os.access(victim, os.R_OK):  # running as root: permissions do not stop a read, so simulate one
        real = Path.open

        def denied(self: Path, *args: object, **kwargs: object) -> object:
            if self == victim:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    with Engine(model="classic") as engine:
        report = engine.ingest(victim.parent)
    assert report.failed == [(str(victim), "cannot read: Permission denied")]
    assert report.embedded == 2


def test_a_file_that_disappears_after_listing_is_a_failure(make_photos, monkeypatch):
    photos = make_photos(3)
    listed = ingest_module.discover

    def then_delete(root: Path):
        items = list(listed(root))
        photos[2].unlink()
        yield from items

    with monkeypatch.context() as patch, Engine(model="classic") as engine:
        patch.setattr(ingest_module, "discover", then_delete)
        report = engine.ingest(photos[0].parent)
        assert report.failed == [(str(photos[2]), "file disappeared before it could be read")]
        assert report.embedded == 2
    with Engine() as engine:  # next time it is simply gone: its failure is forgotten
        report = engine.ingest(photos[0].parent)
        assert report.failed == [] and engine.meta.counts()["failures"] == 0


def test_symlinks_inside_are_followed_loops_end_and_links_outside_are_skipped(make_photos, tmp_path):
    photos = make_photos(3)
    folder = photos[0].parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    draw_photo(99).save(elsewhere / "private.jpg")
    (folder / "album").mkdir()
    (folder / "album" / "again.jpg").symlink_to(photos[0])  # inside: followed, a copy of photo000
    (folder / "album" / "up").symlink_to(folder)  # a directory loop
    (folder / "self.jpg").symlink_to(folder / "self.jpg")  # a link to itself
    (folder / "out.jpg").symlink_to(elsewhere / "private.jpg")
    (folder / "outdir").symlink_to(elsewhere)
    with Engine(model="classic") as engine:
        report = engine.ingest(folder)
        skipped = dict(report.skipped)
        assert skipped == {
            str(folder / "self.jpg"): "broken or looping symlink",
            str(folder / "out.jpg"): "symlink to outside the indexed folder",
            str(folder / "outdir"): "symlink to outside the indexed folder",
        }
        assert report.failed == [] and (report.added, report.embedded, report.linked) == (4, 3, 1)
        assert engine.meta.content_id_for_path(folder / "album" / "again.jpg") is not None
    result = invoke("ingest", folder, "--no-progress")
    assert result.exit_code == 0 and "skipped: " in result.output


def test_long_and_non_utf8_file_names(tmp_path):
    folder = tmp_path / "names"
    deep = folder.joinpath(*["a-rather-long-folder-name-" + "x" * 40] * 12)
    deep.mkdir(parents=True)
    long_name = deep / ("é" * 100 + "-" + "y" * 45 + ".jpg")  # 250 bytes, the path over 1000
    draw_photo(1).save(long_name)
    draw_photo(2).save(folder / "фото 🌅.jpg")
    bad = os.fsencode(folder) + b"/caf\xe9-latin1.jpg"
    draw_photo(3).save(bad.decode("utf-8", "surrogateescape"), "JPEG")
    shown = str(folder) + "/caf\\xe9-latin1.jpg"
    with Engine(model="classic") as engine:
        report = engine.ingest(folder)
        assert report.embedded == 2
        assert report.failed == [(shown, "file name is not valid UTF-8; rename the file to index it")]
        assert engine.meta.content_id_for_path(long_name) is not None
        again = engine.ingest(folder)  # the failure is kept and not retried while the file is unchanged
        assert again.failed == report.failed and again.unchanged == 2
    result = invoke("ingest", folder, "--no-progress")
    assert result.exit_code == 1 and shown in result.output


def test_an_image_whose_vector_was_lost_is_embedded_again_by_the_next_ingest(make_photos, home):
    photos = make_photos(4)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent)
        lost = engine.meta.content_id_for_path(photos[2])
        store = engine._open_for_writing()
        store.remove([lost])  # as if a damaged vector file had been repaired without it
        store.save()
    with Engine() as engine:
        assert engine.doctor(fix=True).rows_without_vector == 1
        report = engine.ingest(photos[0].parent)
        assert (report.embedded, report.unchanged) == (1, 3)
        assert engine.meta.content_id_for_path(photos[2]) == lost  # the same row, embedded in place
    assert_consistent(home / "default", files=4)


# ---- damaged index files -------------------------------------------------------------------------


def scribble(path: Path, how: str) -> None:
    """Damage a file: cut it in half, or invert 16 bytes in its middle; in a file of several 4 KiB pages,
    overwrite a little of every page but the first (a database whose header opens, whose pages are wrong)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    if len(data) <= 8192:
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(255 - b for b in data[mid : mid + 16])
    rng = np.random.default_rng(0)
    for start in range(4096, len(data) if len(data) > 8192 else 0, 4096):
        spot = start + 100 + int(rng.integers(0, 3900))
        data[spot : spot + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_damaged_database_is_refused_in_one_line_with_exit_6(make_photos, home, how):
    photos = make_photos(30)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent)
    scribble(home / "default" / "meta.sqlite", how)
    with pytest.raises(IndexCorruptError, match=r"meta\.sqlite is damaged"):
        Engine()
    result = invoke("search", "--image", photos[0])
    assert result.exit_code == 6
    assert result.output.count("\n") == 1 and "meta.sqlite is damaged" in result.output


def test_a_large_database_is_quick_checked_by_doctor_not_before_every_command(make_photos, home, monkeypatch):
    """quick_check reads every page (seconds for a million files): every open checks a small database, and
    only `doctor` a large one."""
    photos = make_photos(30)
    invoke("ingest", photos[0].parent, "--model", "classic", "--no-progress")
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)  # the reader's connections
    monkeypatch.setattr(sqlite3.dbapi2, "connect", traced)  # SQLAlchemy's
    checks = lambda: sum("quick_check" in s for s in statements)  # noqa: E731
    assert invoke("stats").exit_code == 0 and checks() >= 1  # a small database: checked at open
    monkeypatch.setattr(reader_module, "QUICK_CHECK_MAX_BYTES", 0)  # as if it held a million files
    statements.clear()
    assert invoke("stats").exit_code == 0
    assert invoke("search", "--image", photos[1]).exit_code == 0
    assert invoke("duplicates").exit_code == 0
    assert checks() == 0
    assert invoke("doctor").exit_code == 0 and checks() == 1
    scribble(home / "default" / "meta.sqlite", "garble")
    result = invoke("doctor")
    assert result.exit_code == 6 and result.output.count("\n") == 1
    assert "meta.sqlite is damaged" in result.output


def garbled_copies(data: bytes) -> dict[str, bytes]:
    """A database's bytes with garbage where quick_check does not look, and flipped across every page."""
    times = [m.start() for m in re.finditer(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", data)]
    assert times and b"reason TEXT" in data and b'"classic"' in data

    def edited(*edits: tuple[int, bytes]) -> bytes:
        out = bytearray(data)
        for at, new in edits:
            out[at : at + len(new)] = new
        return bytes(out)

    schema = data.index(b"CREATE TABLE failures")
    copies = {
        "a column renamed in the schema": data.replace(b"reason TEXT", b"raison TEXT"),
        "the schema not UTF-8": edited((schema + 16, b"\xff\xfe\xfd")),
        "a manifest value not UTF-8": data.replace(b'"classic"', b'"cl\xff\xfeic"'),
        "dates not UTF-8": edited(*((at, b"\xff\xfe") for at in times)),
        "dates not dates": edited(*((at, b"zz") for at in times)),
    }
    for start in range(0, len(data), 4096):
        for at in (start + 100, start + 2000):
            copies[f"8 bytes flipped at {at}"] = edited((at, bytes(255 - b for b in data[at : at + 8])))
    return copies


def test_garbage_in_the_database_is_one_line_never_a_traceback(make_photos, home):
    photos = make_photos(6)
    (photos[0].parent / "broken.jpg").write_bytes(b"")  # a failure row too
    invoke("ingest", photos[0].parent, "--model", "classic", "--no-progress")
    db = home / "default" / "meta.sqlite"
    intact = db.read_bytes()
    for what, data in garbled_copies(intact).items():
        db.write_bytes(data)
        codes = []
        for args in (["stats"], ["search", "--image", photos[1]], ["doctor"]):
            result = invoke(*args)
            assert not result.exception or isinstance(result.exception, SystemExit), (
                what,
                args,
                result.exception,
            )
            assert result.exit_code in (0, 6), (what, args, result.output)
            if result.exit_code == 6:
                assert result.output.count("\n") == 1 and "is damaged" in result.output, (what, result.output)
            codes.append(result.exit_code)
        if not what.startswith("8 bytes"):  # aimed at what the commands read: each is met, as damage
            assert 6 in codes, what
    db.write_bytes(intact)
    assert invoke("stats").exit_code == 0


def test_an_emptied_database_is_not_mistaken_for_a_new_index(make_photos, home):
    photos = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent)
    (home / "default" / "meta.sqlite").write_bytes(b"")
    with pytest.raises(IndexCorruptError, match="is empty but the index has vectors"):
        Engine()
    result = invoke("search", "--image", photos[0])
    assert result.exit_code == 6 and "empty" in result.output


def test_a_deleted_database_is_not_mistaken_for_a_new_index(make_photos, home):
    photos = make_photos(3)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent)
    for path in (home / "default").glob("meta.sqlite*"):
        path.unlink()
    with pytest.raises(IndexCorruptError, match="is missing but the index has vectors"):
        Engine()
    for args in (["ingest", photos[0].parent, "--no-progress"], ["search", "--image", photos[0]]):
        result = invoke(*args)
        assert result.exit_code == 6, result.output
        line = one_line(result)
        assert "missing" in line and "restore it from a backup" in line
    assert not (home / "default" / "meta.sqlite").exists()  # no new index with the default model


# ---- a full disk ---------------------------------------------------------------------------------


def fail_vector_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up halfway through the first file of the next vector-store generation."""

    def full(folder: Path, name: str, data: memoryview) -> dict[str, object]:
        (folder / (name + ".tmp")).write_bytes(bytes(data)[: data.nbytes // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / (name + ".tmp")))

    monkeypatch.setattr(fileformat, "write_file", full)


def fail_database_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite finds the disk full when the ingest commits (after its vectors were saved)."""

    def full(self: Session) -> None:
        raise OperationalError("COMMIT", None, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(Session, "commit", full)


@pytest.mark.parametrize("fail", [fail_vector_save, fail_database_commit])
def test_a_full_disk_during_save_leaves_the_previous_version_serving(make_photos, home, monkeypatch, fail):
    old = make_photos(8)
    folder = old[0].parent
    with Engine(model="classic") as engine:
        engine.ingest(folder)
        before = [h.path for h in engine.search_image(old[3], k=8)]
    new = make_photos(4, start=100)
    with Engine() as engine, monkeypatch.context() as patch:
        fail(patch)
        with pytest.raises(IndexWriteError, match="previous version is intact"):
            engine.ingest(folder)
        result = invoke("ingest", folder, "--no-progress")
        assert result.exit_code == 4, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: cannot write the index")
        assert "No space left on device" in result.output or "database or disk is full" in result.output
        assert [h.path for h in engine.search_image(old[3], k=8)] == before  # the engine that failed
    assert_consistent(home / "default", files=8)
    with Engine() as engine:  # and a new reader serve the previous version, whole
        assert [h.path for h in engine.search_image(old[3], k=8)] == before
        report = engine.ingest(folder)  # with room again, the next ingest completes the work
        assert (report.added, report.embedded) == (4, 4)
        assert engine.search_image(new[0], k=1)[0].path == str(new[0])
    assert_consistent(home / "default", files=12)


def refuse_writes(monkeypatch: pytest.MonkeyPatch, folder: Path, err: int) -> None:
    """The disk under `folder` refuses every write with `err` (ENOSPC a full disk, EROFS a read-only mount,
    EACCES no permission), as the OS and SQLite report it: a file opened there for writing fails, a new folder
    cannot be made, and SQLite, which must write a WAL database's -shm file even to read it, cannot open the
    database (in its own vague words) unless as immutable."""
    real_os_open, real_open, real_mkdir = os.open, io.open, os.mkdir
    real_connect = sqlite3.dbapi2.connect

    def inside(path: object) -> bool:
        return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(str(folder))

    def refused(path: object) -> OSError:
        return OSError(err, os.strerror(err), os.fspath(path))  # type: ignore[arg-type]

    def os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise refused(path)
        return real_os_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def io_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if inside(path) and set(mode) & set("wax+"):
            raise refused(path)
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if inside(path) and not os.path.isdir(path):  # type: ignore[arg-type]
            raise refused(path)
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    def connect(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if inside(unquote(database.removeprefix("file:"))) and "immutable=1" not in database:
            message, name = (
                ("disk I/O error", "SQLITE_IOERR_SHMSIZE")
                if err == errno.ENOSPC
                else ("unable to open database file", "SQLITE_CANTOPEN")
            )
            exc = sqlite3.OperationalError(message)
            exc.sqlite_errorname = name
            raise exc
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", connect)


def one_line(result: object) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert output.count("\n") == 1 and "Traceback" not in output, output
    return output


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_disk_that_refuses_writes_is_not_taken_for_damage_and_reads_go_on(make_photos, home, err):
    photos = make_photos(8)
    folder = photos[0].parent
    invoke("ingest", folder, "--model", "classic", "--no-progress")
    with pytest.MonkeyPatch.context() as patch:
        refuse_writes(patch, home, err)
        result = invoke("stats")
        assert result.exit_code == 0, result.output
        assert "8 embedded; 8 vectors" in result.output
        result = invoke("search", "--image", photos[3], "-k", "2", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["results"][0]["path"] == str(photos[3])
        assert invoke("similar", "1", "-k", "3").exit_code == 0
        assert invoke("duplicates").exit_code == 0
        result = invoke("doctor")
        assert result.exit_code == 0 and "ok" in result.output, result.output
        for args in (["ingest", folder, "--no-progress"], ["remove", photos[0]]):
            result = invoke(*args)
            assert result.exit_code == 4, (args, result.output)
            line = one_line(result)
            assert os.strerror(err) in line and "the previous version is intact" in line, line
            assert "damaged" not in line
    with Engine() as engine:  # the disk takes writes again: nothing was lost
        assert engine.ingest(folder).unchanged == 8
    assert_consistent(home / "default", files=8)


@pytest.mark.parametrize("made", [False, True])
def test_ingest_on_a_read_only_mount_is_one_line_and_exit_4(make_photos, home, made):
    folder = make_photos(2)[0].parent
    if made:  # the index folder exists; its lock file cannot be made
        (home / "fresh").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        refuse_writes(patch, home, errno.EROFS)
        result = invoke("ingest", folder, "--index", "fresh", "--model", "classic", "--no-progress")
    assert result.exit_code == 4, result.output
    assert "Read-only file system" in one_line(result)


def test_thumbnails_that_cannot_be_kept_are_drawn_all_the_same(make_photos, home, tmp_path):
    photos = make_photos(8)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent, thumbnails=False)  # made by the map and the server, as asked for
    with pytest.MonkeyPatch.context() as patch:
        refuse_writes(patch, home, errno.ENOSPC)
        result = invoke("map", "--similar", "1", "-n", "6", "--out", tmp_path / "map.png")
        assert result.exit_code == 0, result.output
        with Engine() as engine:
            data, digest = engine.thumbnail(2, 96)
            assert data is not None and data[:2] == b"\xff\xd8" and digest
    assert (tmp_path / "map.png").stat().st_size > 0
    assert not list((home / "default").rglob("*.jpg"))  # nothing was cached


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_index_folder_still_answers_searches(make_photos, home):
    photos = make_photos(4)
    invoke("ingest", photos[0].parent, "--model", "classic", "--no-progress")
    index = home / "default"
    modes = {path: path.stat().st_mode for path in [index, *index.rglob("*")]}
    try:
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
        result = invoke("search", "--image", photos[1], "-k", "1", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["results"][0]["path"] == str(photos[1])
        result = invoke("ingest", photos[0].parent, "--no-progress")
        assert result.exit_code == 4 and "Permission denied" in one_line(result)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vector store whose generation 2 adds 50 vectors to generation 1's 400 (dim 160: int8 tail used)."""
    folder = tmp_path_factory.mktemp("store") / "vectors"
    store = VectorStore.create(folder, 160)
    store.add(np.arange(400) + 1000, unit_rows(400, 160, 1))
    store.save()
    store.add(np.arange(50) + 5000, unit_rows(50, 160, 2))
    store.save()
    store.close()
    return folder


def damage_store_file(folder: Path, what: str) -> None:
    if what == "row":  # one original overwritten in place: sizes and generation checksums still agree
        with open(folder / "originals-000000.f32", "r+b") as f:
            f.seek(160 * 4 * 17)
            f.write(b"\x7f" * 64)
        return
    suffix, how = what.split(":")
    (path,) = [p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith("g00000001")]
    scribble(path, how)


@pytest.mark.parametrize(
    ("what", "lost"),
    [
        (".graph:garble", 0),
        (".codes:truncate", 0),
        (".quantizer.npz:garble", 0),
        ("MANIFEST.json:garble", 0),
        (".slots:garble", 50),  # generation 1's ids stand in: generation 2's additions are lost
        (".f32:truncate", 225),
        ("row", 1),
    ],
)
def test_a_damaged_vector_store_is_detected_and_rebuilt_from_its_vectors(
    two_generations, tmp_path, what, lost
):
    folder = tmp_path / "vectors"
    shutil.copytree(two_generations, folder)
    with VectorStore.open(folder) as intact:
        ids = intact.ids()
        originals = intact.vectors(ids)
    damage_store_file(folder, what)
    if what == "row":
        with VectorStore.open(folder) as damaged:  # opening reads no original; a search that meets it does
            assert damaged.garbled_ids().tolist() == [1017]
            with pytest.raises(IndexCorruptError, match="garbled vectors"):
                damaged.search(originals[17], 5)
    else:
        with pytest.raises(IndexCorruptError, match=r"garbled|truncated"):
            VectorStore.open(folder)

    rebuilt, dropped = VectorStore.rebuild(folder, dim=160)
    rebuilt.close()
    assert dropped == lost
    with VectorStore.open(folder) as store:
        kept = np.isin(ids, store.ids())
        assert kept.sum() == len(ids) - lost == len(store)
        queries = unit_rows(20, 160, 3)
        found, _ = store.search(queries, 5)
        truth = ids[kept][np.argsort(-(queries @ originals[kept].T), axis=1)[:, :5]]
        assert np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth, strict=True)]) >= 0.9
    generation_3 = {f"g00000003.{kind}" for kind in ("slots", "codes", "graph", "quantizer.npz")}
    assert {p.name for p in folder.iterdir()} == {"MANIFEST.json", "originals-000000.f32", *generation_3}


@pytest.mark.parametrize(("what", "lost"), [(".graph", 0), ("MANIFEST.json", 0), (".f32", 6), ("row", 1)])
def test_doctor_explains_a_damaged_vector_index_and_rebuilds_it(make_photos, home, what, lost):
    photos = make_photos(12)
    with Engine(model="classic") as engine:
        engine.ingest(photos[0].parent)
        slot_5 = int(engine.store.ids()[5])  # one ingest: slots follow ids
        query = Path(engine.meta.records([slot_5])[slot_5].path) if what == "row" else photos[3]
    vectors = home / "default" / "vectors"
    if what == "row":  # overwritten in place: only reading it shows
        with open(vectors / "originals-000000.f32", "r+b") as f:
            f.seek(5 * 256 * 4)
            f.write(b"\xff" * 32)
    else:
        (path,) = [p for p in vectors.iterdir() if p.name.endswith(what)]
        scribble(path, "truncate" if what == ".f32" else "garble")

    refused = invoke("search", "--image", query)
    assert refused.exit_code == 6 and refused.output.count("\n") == 1, refused.output
    assert "retrieval doctor --fix" in refused.output
    checked = invoke("doctor")
    assert checked.exit_code == 6, checked.output
    assert (
        "problem: the vector index is damaged" in checked.output
        and "run `retrieval doctor --fix`" in checked.output
    )
    fixed = invoke("doctor", "--fix")
    assert fixed.exit_code == 0 and "fixed" in fixed.output, fixed.output
    assert f"repaired: rebuilt the vector index from {12 - lost} stored vectors ({lost} lost)" in fixed.output
    assert invoke("doctor").exit_code == 0

    with Engine() as engine:
        assert sum(engine.search_image(p, k=1)[0].path == str(p) for p in photos) == 12 - lost
        report = engine.ingest(photos[0].parent)  # the lost ones are embedded again
        assert (report.embedded, report.unchanged) == (lost, 12 - lost)
        assert all(engine.search_image(p, k=1)[0].path == str(p) for p in photos)
    assert_consistent(home / "default", files=12)

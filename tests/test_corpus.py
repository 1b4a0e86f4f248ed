"""A corpus of damaged and hostile image files, made here: every one decodes to RGB or fails with a one-line
reason, within seconds and bounded memory, with nothing on stderr, and Ghostscript never runs.

Each file is named `.jpg` whatever it holds: the decoder is chosen by content, not by name.
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps
from retrieval_cli.main import app
from support.odd_images import (
    DECLARING,
    DECODED_FORMATS,
    REFUSED,
    encoded,
    flipped,
    png16_bomb,
    png_declaring,
    scene,
)
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import DecodeError
from retrieval.files.decoding import decode_image

DECODED, REFUSED_CASE, EITHER = "decoded", "refused", "either"
SECONDS_PER_FILE = 10


@functools.cache
def photo(fmt: str) -> bytes:
    """A small photo-like picture in `fmt`, the base of the damaged variants (TIFF compressed, so that
    libtiff decodes it: Pillow reads uncompressed strips itself)."""
    params = {"compression": "tiff_lzw"} if fmt == "TIFF" else {}
    return encoded(draw_photo(7, (160, 120)), fmt, **params)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


def palette_with_transparency(fmt: str) -> bytes:
    image = scene((64, 48)).quantize(32)
    return encoded(image, fmt, transparency=0)


def oriented_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encoded(scene(), "JPEG", quality=95, exif=exif)


def build_corpus() -> dict[str, tuple[Callable[[], bytes], str]]:
    """Case name -> (the file's bytes, what must come of it)."""
    cases: dict[str, tuple[Callable[[], bytes], str]] = {}
    for fmt in DECODED_FORMATS:
        for tenth in range(1, 10):
            cases[f"{fmt}-cut-at-{tenth}0%"] = (
                lambda f=fmt, t=tenth: photo(f)[: len(photo(f)) * t // 10],
                EITHER,
            )
        for seed in range(4):
            cases[f"{fmt}-8-flipped-bytes-{seed}"] = (lambda f=fmt, s=seed: flipped(photo(f), s), EITHER)
        for seed in range(2):
            cases[f"{fmt}-flipped-header-{seed}"] = (
                lambda f=fmt, s=seed: flipped(photo(f), s, flips=3, keep_signature=False),
                EITHER,
            )
        side = 65535 if fmt in ("JPEG", "GIF") else 100_000  # their headers hold 16 bits a side
        cases[f"{fmt}-declares-{side}x{side}"] = (lambda f=fmt, n=side: DECLARING[f](n, n), REFUSED_CASE)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        for size in ((1, 3000), (3000, 1), (1, 1)):
            name = f"{fmt}-{size[0]}x{size[1]}"
            cases[name] = (lambda f=fmt, s=size: encoded(scene(s), f), DECODED)
    cases["PNG-16-bit-declares-100000x100000"] = (
        lambda: png_declaring(100_000, 100_000, bit_depth=16),
        REFUSED_CASE,
    )
    cases["JPEG-CMYK"] = (lambda: encoded(scene().convert("CMYK"), "JPEG"), DECODED)
    cases["PNG-palette-transparency"] = (lambda: palette_with_transparency("PNG"), DECODED)
    cases["GIF-palette-transparency"] = (lambda: palette_with_transparency("GIF"), DECODED)
    cases["GIF-animated"] = (lambda: animated("GIF"), DECODED)
    cases["WEBP-animated"] = (lambda: animated("WEBP"), DECODED)
    for orientation in range(1, 9):
        cases[f"JPEG-orientation-{orientation}"] = (lambda o=orientation: oriented_jpeg(o), DECODED)
    cases["EPS-named-jpg"] = (REFUSED["EPS"], REFUSED_CASE)
    cases["PSD-named-jpg"] = (REFUSED["PSD"], REFUSED_CASE)
    return cases


CORPUS = build_corpus()
GROUPS = sorted({name.split("-")[0] for name in CORPUS})  # one test per format keeps the corpus fast


def check(name: str, path: Path) -> str | None:
    """What is wrong with how `path` (corpus case `name`) decodes, or None."""
    expected = CORPUS[name][1]
    for min_side in (224, None):  # as ingest and queries decode, and at full resolution
        started = time.monotonic()
        try:
            decoded = decode_image(path, min_side=min_side)
        except DecodeError as error:
            message = str(error)
            if expected == DECODED:
                return f"failed: {message}"
            if not message.startswith(f"{path}: ") or "\n" in message or len(message) > 300:
                return f"not a one-line reason: {message!r}"
            if name.endswith("-named-jpg") and f"looks like {name.split('-')[0]}" not in message:
                return f"does not name the refused format: {message}"
        else:
            if expected == REFUSED_CASE:
                return f"decoded to {decoded.image.size} instead of being refused"
            if decoded.image.mode != "RGB" or any("\n" in line for line in getattr(decoded, "warnings", ())):
                return f"decoded to {decoded.image.mode}"
        if time.monotonic() - started > SECONDS_PER_FILE:
            return f"took {time.monotonic() - started:.1f} s"
    return None


@pytest.mark.parametrize("group", GROUPS)
def test_each_file_decodes_or_fails_in_one_line_quickly_and_quietly(
    group: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], ghostscript_runs: list[object]
) -> None:
    names = [name for name in CORPUS if name.split("-")[0] == group]
    problems = {}
    for name in names:
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(CORPUS[name][0]())
        problem = check(name, path)  # an exception other than DecodeError fails the test with its traceback
        if problem is not None:
            problems[name] = problem
    assert problems == {}
    assert capfd.readouterr().err == ""
    assert ghostscript_runs == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation: int) -> None:
    data = oriented_jpeg(orientation)
    decoded = decode_image(data)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert decoded.image.size == upright.size == (decoded.width, decoded.height)
    difference = np.abs(np.asarray(decoded.image, dtype=int) - np.asarray(upright, dtype=int))
    assert difference.mean() < 2


BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from retrieval.files.decoding import decode_image
    from retrieval.settings import UPLOAD_MAX_PIXELS

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux

    before = peak()
    decoded = decode_image(sys.argv[1], min_side=224)  # as ingest decodes it
    print(peak() - before, *decoded.image.size)
    try:
        decode_image(open(sys.argv[1], "rb").read(), min_side=224, max_pixels=UPLOAD_MAX_PIXELS)
    except Exception as error:
        print(error)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS in bytes needs Linux's ru_maxrss")
def test_a_16_bit_bomb_decodes_in_bounded_memory_and_is_refused_as_an_upload(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png16_bomb(13_000))  # 1.5 MB on disk; 338 MB of pixels; it used to peak at 4.9 GB
    done = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    growth, upload = done.stdout.splitlines()
    grew, width, height = (int(word) for word in growth.split())
    assert 224 <= min(width, height) < 13_000
    assert grew < 600 * 2**20, f"peak RSS grew by {grew / 2**20:.0f} MB"
    assert "13000x13000" in upload and "40,000,000 pixels" in upload


def test_an_ingest_embeds_the_good_photos_and_records_the_eps_and_the_truncated_file(
    make_photos: Callable[..., list[Path]], ghostscript_runs: list[object]
) -> None:
    photos = make_photos(3)
    folder = photos[0].parent
    (folder / "scan.jpg").write_bytes(REFUSED["EPS"]())
    whole = encoded(draw_photo(40), "JPEG")
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    result = CliRunner().invoke(app, ["ingest", str(folder), "--model", "classic", "--no-progress"])
    assert result.exit_code == 1, result.output  # README: per-file failures make the exit code 1
    assert "2 failed" in result.output and "Traceback" not in result.output
    assert f"failed: {folder / 'scan.jpg'}: refused: looks like EPS" in result.output
    assert f"failed: {folder / 'cut.jpg'}: truncated" in result.output
    with Engine() as engine:
        counts = engine.meta.counts()
        assert (counts["failures"], len(engine.store)) == (2, 3)
    assert ghostscript_runs == []

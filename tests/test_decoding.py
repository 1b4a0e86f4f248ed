"""decode_image: every odd file becomes an upright RGB image or a DecodeError with a short reason.

tests/test_corpus.py runs the same promise over a generated corpus of damaged and hostile files.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import warnings
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw, ImageOps, features
from support.odd_images import REFUSED, encoded, png_declaring, scene

from retrieval.errors import DecodeError, UsageError
from retrieval.files import decoding
from retrieval.files.decoding import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    DecodedImage,
    decode_image,
    flatten_alpha,
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries almost no pixel data (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reason_for(source: Path | bytes, **kwargs: object) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_image(source, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_supported_extensions_are_lowercase_with_a_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".heic", ".avif", ".tiff"} <= SUPPORTED_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)


def test_a_jpeg_file_decodes_to_rgb_with_its_size_and_format(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(encoded(scene(), "JPEG", quality=90))
    decoded = decode_image(path)
    assert isinstance(decoded, DecodedImage)
    assert (decoded.image.mode, decoded.image.size) == ("RGB", (96, 64))
    assert (decoded.width, decoded.height, decoded.format, decoded.captured_at) == (96, 64, "JPEG", None)


def test_exif_rotated_jpeg_comes_out_upright_with_sides_swapped() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encoded(scene(), "JPEG", quality=95, exif=exif)
    decoded = decode_image(data)
    assert decoded.image.size == (64, 96)
    assert (decoded.width, decoded.height) == (64, 96)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    difference = np.abs(np.asarray(decoded.image, dtype=int) - np.asarray(upright, dtype=int))
    assert difference.mean() < 2


def test_capture_time_prefers_datetime_original_and_keeps_its_offset() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2020:01:01 00:00:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:15 12:34:56"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = "+02:00"
    decoded = decode_image(encoded(scene(), "JPEG", exif=exif))
    assert decoded.captured_at == datetime(2021, 6, 15, 12, 34, 56, tzinfo=timezone(timedelta(hours=2)))


def test_capture_time_falls_back_to_datetime_and_ignores_placeholders() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2019:12:31 23:59:58"
    assert decode_image(encoded(scene(), "JPEG", exif=exif)).captured_at == datetime(2019, 12, 31, 23, 59, 58)
    exif[ExifTags.Base.DateTime] = "0000:00:00 00:00:00"
    assert decode_image(encoded(scene(), "JPEG", exif=exif)).captured_at is None


def test_draft_decode_of_a_large_jpeg_shrinks_it_but_not_below_min_side() -> None:
    data = encoded(scene((4000, 3000)), "JPEG", quality=85)
    decoded = decode_image(data, min_side=224)
    assert 224 <= min(decoded.image.size) <= 3000 // 4
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decode_image(data).image.size == (4000, 3000)


def test_other_formats_are_reduced_by_an_integer_factor_keeping_twice_min_side() -> None:
    decoded = decode_image(encoded(scene((1000, 800)), "PNG"), min_side=100)
    assert 200 <= min(decoded.image.size) < 800
    assert (decoded.width, decoded.height) == (1000, 800)


def test_an_image_smaller_than_min_side_is_not_upscaled() -> None:
    assert decode_image(encoded(scene((40, 30)), "JPEG"), min_side=224).image.size == (40, 30)


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode_image(encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = np.asarray(decoded.image, dtype=int).reshape(-1, 3).mean(axis=0)
    assert decoded.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    decoded = decode_image(encoded(Image.fromarray(ramp), "PNG"))
    grey = np.asarray(decoded.image, dtype=int)[..., 0]
    assert grey[0, 0] <= 2 and grey[-1, -1] >= 253 and 100 < grey[32, 0] < 160


def test_palette_transparency_is_composited_on_mid_grey() -> None:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 255, 0, 0, 0, 0] + [0] * 762)
    ImageDraw.Draw(image).rectangle((8, 8, 23, 23), fill=1)
    pixels = np.asarray(decode_image(encoded(image, "PNG", transparency=0)).image)
    assert tuple(pixels[0, 0]) == ALPHA_BACKGROUND and tuple(pixels[16, 16]) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_mid_grey_or_kept_when_asked(mode: str) -> None:
    image = Image.new("RGBA", (32, 32), (200, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((8, 8, 23, 23), fill=(0, 0, 0, 255))
    data = encoded(image.convert(mode), "PNG")
    pixels = np.asarray(decode_image(data).image)
    assert tuple(pixels[0, 0]) == ALPHA_BACKGROUND == (128, 128, 128) and tuple(pixels[16, 16]) == (0, 0, 0)
    kept = decode_image(data, keep_alpha=True).image
    assert kept.mode == "RGBA" and kept.getpixel((0, 0))[3] == 0 and kept.getpixel((16, 16)) == (0, 0, 0, 255)
    assert np.array_equal(np.asarray(flatten_alpha(kept)), pixels)
    opaque = decode_image(encoded(scene(), "PNG"), keep_alpha=True).image
    assert opaque.mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True
    )
    decoded = decode_image(data)
    assert decoded.format == fmt
    assert tuple(np.asarray(decoded.image)[16, 16]) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "HEIF", "AVIF"])
def test_tiff_bmp_heic_and_avif_decode(fmt: str) -> None:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    decoded = decode_image(encoded(scene(), fmt))
    assert (decoded.format, decoded.image.mode, decoded.image.size) == (fmt, "RGB", (96, 64))


def test_heic_without_pillow_heif_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    data = encoded(scene(), "HEIF")
    monkeypatch.setattr(decoding, "_heif_support", lambda: False)
    assert "pillow-heif" in reason_for(data)


def test_empty_files_and_uploads_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason_for(path) == "empty file"
    with pytest.raises(DecodeError) as caught:
        decode_image(b"")
    assert caught.value.path == "<upload>"


def test_a_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("definitely not a picture\n")
    assert "not an image" in reason_for(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_data_is_refused(fmt: str) -> None:
    data = encoded(Image.effect_noise((128, 128), 60).convert("RGB"), fmt)
    reason = reason_for(data[: len(data) // 2])
    assert "truncated" in reason or "corrupt" in reason


def test_declared_size_above_max_pixels_is_refused_before_decoding() -> None:
    # The data is far too short for 5000x5000: only a header check can name that size.
    reason = reason_for(png_header_only(5000, 5000), max_pixels=1_000_000)
    assert "5000x5000" in reason and "decompression bomb" in reason


def test_pillows_own_bomb_error_becomes_decode_error() -> None:
    reason = reason_for(png_header_only(30_000, 30_000), max_pixels=10**12)
    assert "decompression-bomb" in reason


def test_pillows_bomb_warning_becomes_decode_error_without_a_stray_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encoded(scene((40, 40)), "PNG")  # 1600 pixels: Pillow warns (> 1000) but does not raise (< 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "decompression" in reason_for(data, max_pixels=1000)
        # A budget larger than Pillow's is the caller's explicit choice: honoured, silently.
        assert decode_image(data, max_pixels=10_000).image.size == (40, 40)


def test_default_budget_agrees_with_pillows_hard_limit() -> None:
    assert DEFAULT_MAX_PIXELS <= 2 * Image.MAX_IMAGE_PIXELS


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    assert "not found" in reason_for(tmp_path / "gone.jpg")
    assert "directory" in reason_for(tmp_path)


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(encoded(scene(), "JPEG"))

    def deny(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)  # tests may run as root, where chmod 000 would not stop a read
    assert reason_for(path) == "permission denied"


# -- the decoder allow-list ---------------------------------------------------------------------------------


def test_an_eps_file_named_jpg_is_refused_by_name_and_ghostscript_never_runs(
    tmp_path: Path, ghostscript_runs: list[object]
) -> None:
    path = tmp_path / "holiday.jpg"
    path.write_bytes(REFUSED["EPS"]())
    reason = reason_for(path)
    assert "EPS" in reason and "JPEG, PNG" in reason
    assert ghostscript_runs == []


@pytest.mark.parametrize("fmt", sorted(REFUSED))
def test_formats_pillow_reads_but_photos_never_use_are_refused(
    fmt: str, ghostscript_runs: list[object]
) -> None:
    data = REFUSED[fmt]()
    reason = reason_for(data)
    assert "refused" in reason or "not an image" in reason
    assert ghostscript_runs == []


def test_an_open_file_is_decoded_from_its_start_and_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encoded(scene(), "PNG"))
    with path.open("rb") as fp:
        fp.read(5)
        assert decode_image(fp).image.size == (96, 64)
    path.write_bytes(b"not a picture at all")
    with path.open("rb") as fp, pytest.raises(DecodeError) as caught:
        decode_image(fp)
    assert caught.value.path == str(path)


# -- budgets: pixels, decoded bytes, file size, time --------------------------------------------------------


def test_pixels_that_decode_to_more_bytes_than_the_budget_are_refused_before_decoding() -> None:
    # 49 MP is within a 50 MP budget, but four 8-bit channels are 196 MB: more than 50 MP of RGB (150 MB).
    rgba = png_declaring(7000, 7000, colour_type=6)
    reason = reason_for(rgba, max_pixels=50_000_000)
    assert "7000x7000 RGBA" in reason and "decompression bomb" in reason
    rgb = reason_for(png_declaring(7000, 7000), max_pixels=50_000_000)
    assert "truncated" in rgb  # three channels fit the budget: decoded, and found short


def test_a_deep_picture_is_shrunk_and_scaled_without_a_wide_copy_of_it() -> None:
    ramp = np.linspace(0, 65535, 4000)[None, :].repeat(4000, axis=0).astype(np.uint16)
    data = encoded(Image.fromarray(ramp), "PNG")  # 16 MP of 16-bit grey: 32 MB of pixels
    tracemalloc.start()
    try:
        decoded = decode_image(data, min_side=224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Pillow's own pixels are not traced; a float64 copy of the picture (128 MB) and its temporaries were.
    assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MB"
    grey = np.asarray(decoded.image, dtype=int)[..., 0]
    assert decoded.image.size == (1000, 1000) and (decoded.width, decoded.height) == (4000, 4000)
    assert grey[0, 0] <= 1 and grey[0, -1] >= 254 and abs(grey[0, 500] - 128) <= 2


def test_a_file_above_the_size_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encoded(Image.effect_noise((256, 256), 60), "PNG"))
    assert "limit for an image" in reason_for(path, max_file_bytes=10_000)
    assert "limit for an image" in reason_for(path.read_bytes(), max_file_bytes=10_000)
    monkeypatch.setenv("RETRIEVAL_MAX_FILE_MB", "0.01")
    assert "RETRIEVAL_MAX_FILE_MB" in reason_for(path)
    monkeypatch.setenv("RETRIEVAL_MAX_FILE_MB", "1")
    assert decode_image(path).image.size == (256, 256)


@pytest.mark.parametrize("name", ["RETRIEVAL_MAX_FILE_MB", "RETRIEVAL_DECODE_SECONDS"])
@pytest.mark.parametrize("value", ["lots", "0", "-3", "inf"])
def test_a_bad_budget_in_the_environment_names_the_variable(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=f"\\${name} must be a positive number"):
        decode_image(encoded(scene(), "PNG"))


def test_a_decode_over_its_time_budget_stops_and_is_a_failure() -> None:
    noise = Image.effect_noise((1500, 1500), 80).convert("RGB")
    data = encoded(noise, "PNG", compress_level=1)  # 7 MB, which Pillow reads in 64 KB blocks
    started = time.monotonic()
    reason = reason_for(data, max_seconds=0.001)
    assert "took longer than 0.001 s" in reason and "RETRIEVAL_DECODE_SECONDS" in reason
    assert time.monotonic() - started < 5
    assert decode_image(data, max_seconds=60).image.size == (1500, 1500)


def test_the_time_budget_is_checked_between_stages_as_well(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]

    def slow_clock() -> float:  # every look at the clock finds another 10 seconds gone
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(decoding, "_clock", slow_clock)
    assert "took longer than 30 s" in reason_for(encoded(scene(), "PNG"), max_seconds=30)


# -- warnings: kept per file, never printed -------------------------------------------------------------


def test_libtiff_complaints_go_into_the_reason_not_onto_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    data = bytearray(
        encoded(Image.effect_noise((200, 100), 60).convert("RGB"), "TIFF", compression="tiff_lzw")
    )
    for at in range(60, 100):  # Pillow writes the strips right after the 8-byte header: break the LZW codes
        data[at] ^= 0xFF
    reason = reason_for(bytes(data))
    assert reason.startswith("corrupt image data") and "decoder error" not in reason, reason
    assert capfd.readouterr().err == ""


def test_pillow_warnings_stay_with_the_image_instead_of_being_printed() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "camera"
    exif[ExifTags.Base.DateTime] = "2020:01:01 00:00:00"
    data = encoded(scene(), "JPEG", exif=exif.tobytes()[:-6])  # EXIF cut short
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail the test
        decoded = decode_image(data)
    assert decoded.image.size == (96, 64)
    assert decoded.warnings and all("\n" not in line for line in decoded.warnings)
    assert decode_image(encoded(scene(), "PNG")).warnings == ()

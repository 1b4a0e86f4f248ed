"""Safe image decoding shared by ingest, queries and the HTTP server.

Every image that enters `retrieval` goes through `decode_image`, so the rules live in one place:

- Decoders: only those of `DECODERS` (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF), chosen by the file's
  content, never by its name or by Pillow's plugin discovery, and none that runs an external program (Pillow's
  EPS plugin starts Ghostscript). Any other format is refused, by name when its header says which it is.
- Budgets, each a `DecodeError` rather than a hang or a process killed for memory: the file's size
  (`settings.max_file_bytes()`); the pixels its header declares (`max_pixels`; uploads get a lower one);
  the bytes those pixels decode to (channels x bit depth, at most those of an 8-bit RGB picture of
  `max_pixels`), checked before any pixel is decoded; and time (`settings.decode_seconds()`).
- Memory: a picture is shrunk in its own mode before it is converted (DCT scaling for JPEG, `Image.reduce`
  for the rest; 16-bit and float pictures are reduced and scaled to 8 bits one band of rows at a time), so
  no full-size copy in a wider type is ever made.
- Warnings: what Pillow and libtiff would print about a damaged file is captured per file, into
  `DecodedImage.warnings` or the failure's reason, and never written to stderr.
- Result: an upright RGB picture, optionally shrunk while loading so that a 24-megapixel JPEG costs what a
  1-megapixel one does.
- Transparency: one rule for every consumer (ingest, queries, thumbnails): transparent pixels are shown over
  mid-grey (`ALPHA_BACKGROUND`, through `flatten_alpha`). On white, a mostly-transparent artwork is a blank
  page and any two of them look alike. A consumer that uses the alpha itself (the classic embedder crops to
  the visible part) asks for it with `keep_alpha` and flattens through the same helper.

How the time budget is kept: a thread cannot be killed, so the budget is enforced cooperatively. The file
is read through a wrapper that raises once the deadline has passed (Pillow feeds its decoders the file
64 KB at a time, so a slow decode stops within a block), and the clock is checked again between stages
(header, pixels, shrinking, conversion) and between the bands of a deep picture. What a single call into a
C decoder does is bounded instead by the budgets above: with external programs excluded and the decoded
bytes capped, no one call has unbounded work. A process per decode would give a hard guarantee, but would
cost a process start and a copy of the pixels for every photo, to guard a case the budgets already bound.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageMode, UnidentifiedImageError, features

from retrieval import settings
from retrieval.errors import DecodeError, UsageError
from retrieval.settings import DEFAULT_MAX_PIXELS

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: The only decoders ever tried: Pillow's format id -> the name users know. The file's content picks one.
DECODERS: dict[str, str] = {
    "JPEG": "JPEG",  # multi-picture JPEGs (MPO) too: Pillow's JPEG opener returns them
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "HEIF": "HEIC/HEIF",  # pillow-heif
    "AVIF": "AVIF",  # Pillow >= 11.3
}
_READS = ", ".join(DECODERS.values())

UPLOAD_LABEL = "<upload>"

# A box reduction (Image.reduce) stops while the shorter side is still this many times `min_side`.
REDUCE_MARGIN = 4

# 16-bit, 32-bit integer and float pictures are scaled to 8 bits this many pixels at a time.
BAND_PIXELS = 1 << 22

#: What transparent pixels are shown over, everywhere: a neutral mid-grey.
ALPHA_BACKGROUND = (128, 128, 128)

# EXIF orientation -> the transpose that makes the picture upright.
_ORIENTATION_FIX: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})

# Multi-picture JPEGs (phones, 3D cameras) open as "MPO" but are .jpg files to their owners.
_FORMAT_NAMES = {"MPO": "JPEG"}

_HIGH_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
# Modes whose pixels cannot be averaged as they are (palette indices, bits): expanded before shrinking.
_EXPAND_FIRST = frozenset({"P", "PA", "1"})

# ISO-BMFF brands (bytes 8..12 of the file) of the HEIF family.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# At most this many warnings are kept per file.
_MAX_NOTES = 20
_PRINTF = re.compile(r"%[-#0 +']*\d*(?:\.\d+)?(?:hh|h|ll|l|j|z|t|L|q|I64)?[diouxXeEfFgGaAcsp]")

# Serialises only the header stage (Image.open and EXIF), whose warning capture must not interleave.
_OPEN_LOCK = threading.Lock()
_HEIF_LOCK = threading.Lock()
_heif_registered: bool | None = None
_LIBTIFF_LOCK = threading.Lock()
_libtiff_handlers: tuple[Any, ...] | None = None
_local = threading.local()

# The decode clock; tests replace it.
_clock = time.monotonic


@dataclass(frozen=True)
class PhotoInfo:
    """What a photo's EXIF says about how and where it was taken, for filtering (None where it says nothing).
    A GPS position of exactly (0, 0) counts as absent: it is what cameras write when they have no fix."""

    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None


@dataclass(frozen=True)
class HeaderInfo:
    """What an image's header says, read without decoding its pixels (`read_header`)."""

    width: int
    height: int
    format: str
    captured_at: datetime | None
    info: PhotoInfo


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB picture (RGBA when asked to keep a transparent picture's alpha) plus what the file says
    about itself.

    `width`/`height` are the original size after orientation (what the user sees in a viewer), even when
    `image` was shrunk while loading. `warnings` holds what the decoders said about a damaged but readable
    file (one line each), instead of printing it.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    captured_at: datetime | None
    warnings: tuple[str, ...] = ()
    info: PhotoInfo = PhotoInfo()


def decode_image(
    source: Path | str | bytes | IO[bytes],
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_seconds: float | None = None,
    max_file_bytes: int | None = None,
    keep_alpha: bool = False,
) -> DecodedImage:
    """Decode a file, an open binary file or an uploaded byte string into an upright RGB image.

    Args:
        source: a path, an open binary file (read from the start; named by its `name`), or the raw bytes of
            an upload (reported as "<upload>").
        min_side: the shorter side the caller needs (an embedder's `input_size`); the image is shrunk while
            loading but its shorter side never ends below this. None keeps full resolution.
        max_pixels: refuse images whose header declares more pixels, or whose pixels decode to more bytes than
            an 8-bit RGB picture of this many pixels (decompression bombs), before decoding. Ingest keeps the
            default (`settings.DEFAULT_MAX_PIXELS`); the server passes `settings.UPLOAD_MAX_PIXELS`.
        max_seconds: the time budget of this decode (default `settings.decode_seconds()`, 30 s).
        max_file_bytes: refuse larger files unread (default `settings.max_file_bytes()`, 512 MB).
        keep_alpha: give a picture with transparency as RGBA instead of flattened over `ALPHA_BACKGROUND`
            (an embedder's `keeps_alpha`); the caller then flattens it with `flatten_alpha` itself.

    Raises:
        DecodeError: with a short reason (empty, not an image, a refused format, truncated, too large, too
            slow, unreadable, vanished).
    """
    seconds = settings.decode_seconds() if max_seconds is None else max_seconds
    file_limit = settings.max_file_bytes() if max_file_bytes is None else max_file_bytes
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise DecodeError(UPLOAD_LABEL, "empty file")
        check_file_size(UPLOAD_LABEL, len(data), file_limit)
        return _decode(io.BytesIO(data), UPLOAD_LABEL, min_side, max_pixels, seconds, keep_alpha)
    if not isinstance(source, Path | str):
        label = str(getattr(source, "name", "<stream>"))
        _check_stream_size(source, label, file_limit)
        return _decode(source, label, min_side, max_pixels, seconds, keep_alpha)

    path = Path(source)
    label = str(path)
    try:
        fp = path.open("rb")
    except FileNotFoundError:
        raise DecodeError(label, "file not found (moved or deleted?)") from None
    except PermissionError:
        raise DecodeError(label, "permission denied") from None
    except IsADirectoryError:
        raise DecodeError(label, "is a directory, not an image file") from None
    except OSError as error:
        raise DecodeError(label, f"cannot open: {error.strerror or error}") from None
    with fp:
        _check_stream_size(fp, label, file_limit)
        return _decode(fp, label, min_side, max_pixels, seconds, keep_alpha)


def check_file_size(label: object, size: int, limit: int) -> None:
    """Refuse an image file of `size` bytes above `limit`, with the reason ingest records."""
    if size > limit:
        raise DecodeError(
            label,
            f"file is {_bytes_text(size)}, above the {_bytes_text(limit)} limit for an image "
            f"(${settings.MAX_FILE_MB_ENV} raises it)",
        )


def _check_stream_size(fp: IO[bytes], label: str, limit: int) -> None:
    try:
        try:
            size = os.fstat(fp.fileno()).st_size
        except (AttributeError, io.UnsupportedOperation):
            size = fp.seek(0, io.SEEK_END)
            fp.seek(0)
    except OSError as error:
        raise DecodeError(label, f"cannot read: {error.strerror or error}") from None
    if size == 0:
        raise DecodeError(label, "empty file")
    check_file_size(label, size, limit)


class _Overtime(Exception):
    """The decode ran past its deadline (raised inside Pillow by `_TimedFile`, or between stages)."""


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = _clock() + seconds

    def check(self) -> None:
        if _clock() > self.end:
            raise _Overtime


class _TimedFile:
    """The file as Pillow sees it: every read first checks the decode's deadline (see the module docstring).

    Anything else (`fileno` for libtiff, `getvalue`) goes to the file itself."""

    def __init__(self, raw: IO[bytes], deadline: _Deadline) -> None:
        self.raw = raw
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return self.raw.read(-1 if size is None else size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def _decode(
    fp: IO[bytes], label: str, min_side: int | None, max_pixels: int, seconds: float, keep_alpha: bool
) -> DecodedImage:
    if min_side is not None and min_side < 1:
        raise UsageError(f"min_side must be positive, got {min_side}")
    head = _peek(fp, label)
    _refuse_unsupported_container(head, label)
    deadline = _Deadline(seconds)
    notes: list[str] = []
    try:
        with _captured(notes):
            return _decode_pixels(
                _TimedFile(fp, deadline), head, label, min_side, max_pixels, deadline, notes, keep_alpha
            )
    except _Overtime:
        raise DecodeError(
            label,
            f"took longer than {seconds:g} s to decode (a pathological file?); "
            f"${settings.DECODE_SECONDS_ENV} raises the limit",
        ) from None


def _decode_pixels(
    fp: _TimedFile,
    head: bytes,
    label: str,
    min_side: int | None,
    max_pixels: int,
    deadline: _Deadline,
    notes: list[str],
    keep_alpha: bool = False,
) -> DecodedImage:
    im, orientation, captured_at, info = _open(fp, head, label, max_pixels, notes)
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            label,
            f"declared size {width}x{height} ({width * height:,} pixels) is above the limit of "
            f"{max_pixels:,} pixels (decompression bomb?)",
        )
    image_format = _FORMAT_NAMES.get(im.format or "", im.format or "UNKNOWN")
    deadline.check()

    try:
        if min_side is not None and image_format == "JPEG":
            # DCT scaling: libjpeg decodes straight to 1/2, 1/4 or 1/8 size; shorter side stays >= min_side.
            im.draft(None, (min_side, min_side))
        _check_decoded_bytes(im, label, max_pixels)
        im.load()
        deadline.check()
        factor = 1
        if min_side is not None:
            # A cheap box reduction; the embedder's own resize then antialiases from >= 4x its input size,
            # which keeps its result within a grey level of resizing the full picture (2x is not enough:
            # fine stripes alias by up to 10 levels on average). BENCHMARKS.md has the figures.
            factor = max(1, min(im.size) // (REDUCE_MARGIN * min_side))
        rgb = _to_rgb(im, factor, deadline, keep_alpha)
    except (DecodeError, _Overtime):
        raise
    except MemoryError:
        raise DecodeError(label, "not enough memory to decode") from None
    except Exception as error:  # hostile input makes Pillow raise almost anything
        raise DecodeError(label, _load_failure_reason(error, notes)) from None

    fix = _ORIENTATION_FIX.get(orientation)
    if fix is not None:
        rgb = rgb.transpose(fix)
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return DecodedImage(
        image=rgb,
        width=width,
        height=height,
        format=image_format,
        captured_at=captured_at,
        warnings=tuple(dict.fromkeys(notes)),
        info=info,
    )


def _peek(fp: IO[bytes], label: str) -> bytes:
    try:
        fp.seek(0)
        head = fp.read(16)
        fp.seek(0)
    except OSError as error:
        raise DecodeError(label, f"cannot read: {error.strerror or error}") from None
    return head


def _refuse_unsupported_container(head: bytes, label: str) -> None:
    """Give HEIC/AVIF files a reason that says what to install, instead of "not an image"."""
    if head[4:8] != b"ftyp":
        return
    brand = head[8:12]
    if brand in _HEIF_BRANDS and not _heif_support():
        raise DecodeError(label, "HEIC image, but pillow-heif is not installed (pip install pillow-heif)")
    if brand in _AVIF_BRANDS and not _avif_support():
        raise DecodeError(label, "AVIF image, but this Pillow has no AVIF support (upgrade Pillow >= 11.3)")


def _heif_support() -> bool:
    """Register pillow-heif's opener once, on first need; False when it is not installed."""
    global _heif_registered
    if _heif_registered is None:
        with _HEIF_LOCK:
            if _heif_registered is None:
                try:
                    import pillow_heif
                except ImportError:
                    _heif_registered = False
                else:
                    pillow_heif.register_heif_opener()
                    _heif_registered = True
    return _heif_registered


def _avif_support() -> bool:
    return bool(features.check("avif"))


#: Pillow's plugins for the allowed formats beyond those of `Image.preinit()` (JPEG, PNG, GIF, BMP). Loading
#: only these, not all ~40 as `Image.init()` does, saves a search or an ingest 0.1 s of start-up.
_PLUGINS = ("WebPImagePlugin", "TiffImagePlugin", "AvifImagePlugin")


def _formats(head: bytes) -> list[str]:
    """The allow-list as Pillow format ids this installation can open (a missing one would be a KeyError).
    pillow-heif is registered only for a file that may be HEIF (an ISO media file: "ftyp" at byte 4)."""
    if head[4:8] == b"ftyp":
        _heif_support()
    Image.preinit()
    for plugin in _PLUGINS:
        with suppress(ImportError):  # AVIF: Pillow >= 11.3
            importlib.import_module(f"PIL.{plugin}")
    return [name for name in DECODERS if name in Image.OPEN]


def _open(
    fp: _TimedFile, head: bytes, label: str, max_pixels: int, notes: list[str]
) -> tuple[Image.Image, int, datetime | None, PhotoInfo]:
    """Parse the header with an allowed decoder only, and read EXIF: (image, orientation, capture time, what
    else EXIF says).

    Pillow's hard decompression-bomb limit becomes DecodeError; its warnings go to `notes`."""
    formats = _formats(head)
    try:
        with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Pillow warns above its own limit; the caller's `max_pixels`, checked next, decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(fp, formats=formats)
                orientation, captured_at, info = _read_exif(im)
            finally:
                _note(notes, *(str(w.message) for w in caught))
    except Image.DecompressionBombError as error:
        raise DecodeError(label, f"declared size is above the decompression-bomb limit ({error})") from None
    except UnidentifiedImageError:
        raise DecodeError(label, _unidentified_reason(head)) from None
    except MemoryError:
        raise DecodeError(label, "not enough memory to read the header") from None
    except _Overtime:
        raise
    except Exception as error:  # broken headers raise SyntaxError, struct.error, ValueError, ...
        if isinstance(error, EOFError) or "truncated" in str(error).lower():
            raise DecodeError(label, "truncated image header") from None
        raise DecodeError(label, f"corrupt image header ({_short(error)})") from None
    return im, orientation, captured_at, info


def read_header(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> HeaderInfo:
    """Size (upright), format, capture time and EXIF of an image file, from its header only: what
    `ingest --refresh-metadata` re-reads without decoding or embedding the picture again.

    Raises:
        DecodeError: the file cannot be opened, or its header is not one of an allowed format.
    """
    label = str(path)
    try:
        with Path(path).open("rb") as fp:
            return _read_header(fp, label, max_pixels)
    except OSError as error:
        raise DecodeError(label, f"cannot open: {error.strerror or error}") from None


def _read_header(fp: IO[bytes], label: str, max_pixels: int) -> HeaderInfo:
    head = _peek(fp, label)
    _refuse_unsupported_container(head, label)
    notes: list[str] = []
    deadline = _Deadline(settings.decode_seconds())
    try:
        with _captured(notes):
            timed = _TimedFile(fp, deadline)
            im, orientation, captured_at, info = _open(timed, head, label, max_pixels, notes)
    except _Overtime:
        raise DecodeError(label, "took too long to read its header") from None
    with im:
        width, height = im.size
        image_format = _FORMAT_NAMES.get(im.format or "", im.format or "UNKNOWN")
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return HeaderInfo(width, height, image_format, captured_at, info)


def _unidentified_reason(head: bytes) -> str:
    """Why no allowed decoder took the file, named from its first bytes by Pillow's `accept` checks, which
    only compare bytes (no plugin opens the file)."""
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN.get(name, (None, None))[1]
        try:
            accepted = accept is not None and accept(head)
        except Exception:
            continue
        if not accepted or isinstance(accepted, str):
            continue
        if name in DECODERS or name == "MPO":
            return f"{DECODERS.get(name, 'JPEG')} file with an unreadable header (truncated or corrupt)"
        return f"refused: looks like {name}, not one of the formats retrieval decodes ({_READS})"
    return "not an image (unrecognised format)"


def _check_decoded_bytes(im: Image.Image, label: str, max_pixels: int) -> None:
    """Refuse pixels that decode to more bytes (channels x bit depth) than an 8-bit RGB picture of
    `max_pixels`: a 16-bit or alpha picture counts for more than its pixel count."""
    width, height = im.size
    mode = ImageMode.getmode(im.mode)
    needed = width * height * len(mode.bands) * int(mode.typestr[-1])
    budget = 3 * max_pixels
    if needed > budget:
        raise DecodeError(
            label,
            f"{width}x{height} {im.mode} pixels decode to {_bytes_text(needed)}, above the "
            f"{_bytes_text(budget)} budget of {max_pixels:,} RGB pixels (decompression bomb?)",
        )


def _read_exif(im: Image.Image) -> tuple[int, datetime | None, PhotoInfo]:
    """Return (orientation, capture time, camera, lens and position); damaged EXIF counts as absent rather
    than failing the image, each part on its own."""
    try:
        exif = im.getexif()
        orientation = int(exif.get(ExifTags.Base.Orientation, 1) or 1)
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        captured = _parse_exif_datetime(
            sub.get(ExifTags.Base.DateTimeOriginal), sub.get(ExifTags.Base.OffsetTimeOriginal)
        ) or _parse_exif_datetime(exif.get(ExifTags.Base.DateTime), sub.get(ExifTags.Base.OffsetTime))
    except Exception:
        return 1, None, PhotoInfo()
    try:
        lat, lon = _gps_position(exif.get_ifd(ExifTags.IFD.GPSInfo))
    except Exception:
        lat, lon = None, None
    info = PhotoInfo(
        camera_make=_exif_label(exif.get(ExifTags.Base.Make)),
        camera_model=_exif_label(exif.get(ExifTags.Base.Model)),
        lens=_exif_label(sub.get(ExifTags.Base.LensModel)),
        gps_lat=lat,
        gps_lon=lon,
    )
    return orientation, captured, info


def _exif_label(value: object, limit: int = 120) -> str | None:
    """A short EXIF text (a camera's make or model, a lens), without padding or control characters."""
    text = "".join(ch for ch in _exif_text(value) if ch.isprintable())[:limit].strip()
    return text or None


def _gps_position(gps: Any) -> tuple[float | None, float | None]:
    """Decimal degrees from the GPS IFD's degrees/minutes/seconds and N/S, E/W references."""

    def degrees(value: Any, ref: object, negative: str, bound: float) -> float | None:
        if value is None:
            return None
        parts = [float(v) for v in value]
        if not parts or len(parts) > 3:
            return None
        number = sum(p / 60**i for i, p in enumerate(parts))
        if _exif_text(ref).upper().startswith(negative):
            number = -number
        return number if np.isfinite(number) and abs(number) <= bound else None

    lat = degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "S", 90.0)
    lon = degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "W", 180.0)
    if lat is None or lon is None or (lat == 0.0 and lon == 0.0):
        return None, None
    return lat, lon


def _parse_exif_datetime(value: object, offset: object = None) -> datetime | None:
    """Parse "YYYY:MM:DD HH:MM:SS" (+ optional "+HH:MM" offset); placeholders like all zeros give None."""
    text = _exif_text(value)
    if not text:
        return None
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset_text = _exif_text(offset)
    if offset_text and len(offset_text) >= 6 and offset_text[0] in "+-":
        try:
            hours, minutes = int(offset_text[1:3]), int(offset_text[4:6])
        except ValueError:
            return moment
        sign = -1 if offset_text[0] == "-" else 1
        moment = moment.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return moment


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return ""
    return value.strip("\x00 ").strip()


def _to_rgb(im: Image.Image, factor: int, deadline: _Deadline, keep_alpha: bool = False) -> Image.Image:
    """Shrink by `factor` (a box reduction) in the picture's own mode, then flatten it to 8-bit RGB: alpha
    composited on `ALPHA_BACKGROUND` (or kept as RGBA), 16-bit and float scaled, not clipped. Shrinking first
    keeps every copy small."""
    mode = im.mode
    if mode in _HIGH_DEPTH:
        return _high_depth_to_rgb(im, factor, deadline)
    has_alpha = mode in _ALPHA or "transparency" in im.info
    if mode in _EXPAND_FIRST or (has_alpha and mode not in {"RGBA", "LA"}):
        # A palette index, a bit or a colour key cannot be averaged: expand to real colours first.
        im = im.convert("RGBA" if has_alpha else "L" if mode == "1" else "RGB")
        deadline.check()
    if factor >= 2:
        im = im.reduce(factor)  # RGBA and LA: Pillow averages the colours premultiplied by alpha
        deadline.check()
    if has_alpha:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        return rgba if keep_alpha else flatten_alpha(rgba)
    return im if im.mode == "RGB" else im.convert("RGB")


def flatten_alpha(image: Image.Image, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """`image` as RGB, its transparent pixels shown over `background` (the one rule: leave the default)."""
    if image.mode not in _ALPHA and "transparency" not in image.info:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    # Pasting through the alpha channel is alpha_composite's result (to the grey level) in one pass instead
    # of four: a fifth of the time on a 2-megapixel wallpaper.
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _high_depth_to_rgb(im: Image.Image, factor: int, deadline: _Deadline) -> Image.Image:
    """Reduce and scale a 16-bit, 32-bit or float picture to 8 bits a band of rows at a time (the old way, a
    float64 copy of the whole picture and two more temporaries, took 5 GB for a 13000x13000 16-bit PNG)."""
    width, height = im.size
    out_w, out_h = max(1, width // factor), max(1, height // factor)
    used_w, used_h = min(width, out_w * factor), min(height, out_h * factor)
    rows = factor * max(1, BAND_PIXELS // (used_w * factor))
    floats = im.mode == "F"

    def bands() -> Iterator[tuple[int, np.ndarray]]:
        for top in range(0, used_h, rows):
            deadline.check()
            band = np.array(im.crop((0, top, used_w, min(top + rows, used_h))), dtype=np.float32)
            if floats:
                np.nan_to_num(band, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            yield top, band

    low, high = np.inf, -np.inf
    for _top, band in bands():
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    if floats and low >= 0.0 and high <= 1.0:
        scale = 255.0
    elif high <= 255.0:
        scale = 1.0
    elif high <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    grey = np.empty((out_h, out_w), dtype=np.uint8)
    for top, band in bands():
        if factor > 1:
            band = band.reshape(band.shape[0] // factor, factor, out_w, factor).mean(axis=(1, 3))
        np.clip(band * scale + 0.5, 0, 255, out=band)
        grey[top // factor : top // factor + band.shape[0]] = band
    return Image.fromarray(grey).convert("RGB")


@contextmanager
def _captured(notes: list[str]) -> Iterator[None]:
    """Send what libtiff says while this thread decodes to `notes` instead of stderr."""
    _install_libtiff_handlers()
    outer = getattr(_local, "notes", None)
    _local.notes = notes
    try:
        yield
    finally:
        _local.notes = outer


def _note(notes: list[str], *messages: str) -> None:
    for message in messages:
        text = " ".join(message.split())
        if text and len(notes) < _MAX_NOTES:
            notes.append(text)


def _install_libtiff_handlers() -> None:
    """Replace libtiff's warning and error printers (process-wide, once) by ones that keep the message for
    the file being decoded in this thread. Pillow offers no hook; without one, a damaged TIFF writes lines
    like "TIFFReadDirectory: Warning, Unknown field with tag ..." to stderr with no file name. The message is
    kept as its format string (the C varargs are not read), which is enough to say what went wrong."""
    global _libtiff_handlers
    if _libtiff_handlers is not None:
        return
    with _LIBTIFF_LOCK:
        if _libtiff_handlers is not None:
            return
        handlers: tuple[Any, ...] = ()
        try:
            from PIL import _imaging

            library = ctypes.CDLL(_imaging.__file__)  # its libtiff is found through its dependencies
            set_warning, set_error = library.TIFFSetWarningHandler, library.TIFFSetErrorHandler
        except (ImportError, OSError, AttributeError):  # no libtiff, or a platform without dlsym
            pass
        else:
            handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
            on_warning, on_error = handler(_libtiff_warning), handler(_libtiff_error)
            for setter, callback in ((set_warning, on_warning), (set_error, on_error)):
                setter.argtypes, setter.restype = [handler], ctypes.c_void_p
                setter(callback)
            handlers = (on_warning, on_error)  # kept alive for as long as libtiff may call them
        _libtiff_handlers = handlers


def _libtiff_warning(module: bytes | None, fmt: bytes | None, _args: int | None) -> None:
    _libtiff_message("libtiff", module, fmt)


def _libtiff_error(module: bytes | None, fmt: bytes | None, _args: int | None) -> None:
    _libtiff_message("libtiff error", module, fmt)


def _libtiff_message(kind: str, module: bytes | None, fmt: bytes | None) -> None:
    try:
        notes = getattr(_local, "notes", None)
        if notes is None:  # libtiff used outside a decode: say nothing, as before on Pillow's own writes
            return
        where = (module or b"").decode("ascii", "replace")
        text = _PRINTF.sub("?", (fmt or b"").decode("ascii", "replace")).strip()
        # Pillow names every file it hands libtiff "tempfile.tif": not worth repeating.
        _note(notes, f"{kind}: {where}: {text}" if where and where != "tempfile.tif" else f"{kind}: {text}")
    except Exception:  # an exception must not escape into C
        pass


def _load_failure_reason(error: Exception, notes: list[str]) -> str:
    message = str(error).lower()
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"a frame is above the decompression-bomb limit ({_short(error)})"
    if "truncated" in message or isinstance(error, EOFError):
        return "truncated image data"
    if isinstance(error, ValueError) and "conversion" in message:
        return f"unsupported colour mode ({_short(error)})"
    detail = _short(error)
    tiff_errors = [note for note in notes if note.startswith("libtiff error: ")]
    if message.startswith("decoder error") and tiff_errors:  # Pillow's code alone says nothing
        detail = _short(ValueError(tiff_errors[-1].removeprefix("libtiff error: ")))
    return f"corrupt image data ({detail})"


def _short(error: Exception, limit: int = 80) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bytes_text(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


__all__: list[str] = [
    "ALPHA_BACKGROUND",
    "DECODERS",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "DecodedImage",
    "check_file_size",
    "decode_image",
    "flatten_alpha",
]

"""Safe image decoding shared by ingest, queries and the HTTP server.

Every image that enters `retrieval` goes through `decode_image`, so the rules live in one place: the
declared size is checked against a pixel budget before any pixel is decoded, every failure becomes a
`DecodeError` with a short human reason (ingest records it and goes on), and the result is always an upright
RGB picture, optionally shrunk while loading so that a 24-megapixel JPEG costs what a 1-megapixel one does.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError, features

from retrieval.errors import DecodeError, UsageError

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

# Just under Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, about 179 MP) so that, by default, the two
# never disagree: every camera sensor fits, a forged header announcing gigapixels does not.
DEFAULT_MAX_PIXELS: int = 178_000_000

UPLOAD_LABEL = "<upload>"

# A box reduction (Image.reduce) stops while the shorter side is still this many times `min_side`.
REDUCE_MARGIN = 4

_WHITE = (255, 255, 255)

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

# ISO-BMFF brands (bytes 8..12 of the file) of the HEIF family.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# Serialises only Image.open (header parsing), whose warning filter must not interleave between threads.
_OPEN_LOCK = threading.Lock()
_HEIF_LOCK = threading.Lock()
_heif_registered: bool | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB picture plus what the file says about itself.

    `width`/`height` are the original size after orientation (what the user sees in a viewer), even when
    `image` was shrunk while loading.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    captured_at: datetime | None


def decode_image(
    source: Path | str | bytes,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode a file or an uploaded byte string into an upright RGB image.

    Args:
        source: a path, or the raw bytes of an upload (reported as "<upload>").
        min_side: the shorter side the caller needs (an embedder's `input_size`); the image is shrunk while
            loading but its shorter side never ends below this. None keeps full resolution.
        max_pixels: refuse images whose header declares more pixels (decompression bombs) before decoding.

    Raises:
        DecodeError: with a short reason (empty, not an image, truncated, too large, unreadable, vanished).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise DecodeError(UPLOAD_LABEL, "empty file")
        return _decode(io.BytesIO(data), UPLOAD_LABEL, min_side, max_pixels)

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
        try:
            empty = os.fstat(fp.fileno()).st_size == 0
        except OSError as error:
            raise DecodeError(label, f"cannot read: {error.strerror or error}") from None
        if empty:
            raise DecodeError(label, "empty file")
        return _decode(fp, label, min_side, max_pixels)


def _decode(fp: IO[bytes], label: str, min_side: int | None, max_pixels: int) -> DecodedImage:
    if min_side is not None and min_side < 1:
        raise UsageError(f"min_side must be positive, got {min_side}")
    head = _peek(fp, label)
    _refuse_unsupported_container(head, label)

    im = _open(fp, label, max_pixels)
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            label,
            f"declared size {width}x{height} ({width * height:,} pixels) is above the limit of "
            f"{max_pixels:,} pixels (decompression bomb?)",
        )
    image_format = _FORMAT_NAMES.get(im.format or "", im.format or "UNKNOWN")
    orientation, captured_at = _read_exif(im)

    try:
        if min_side is not None and image_format == "JPEG":
            # DCT scaling: libjpeg decodes straight to 1/2, 1/4 or 1/8 size; shorter side stays >= min_side.
            im.draft(None, (min_side, min_side))
        im.load()
        rgb = _to_rgb(im)
    except MemoryError:
        raise DecodeError(label, "not enough memory to decode") from None
    except Exception as error:  # hostile input makes Pillow raise almost anything
        raise DecodeError(label, _load_failure_reason(error)) from None

    if min_side is not None:
        factor = min(rgb.size) // (REDUCE_MARGIN * min_side)
        if factor >= 2:
            # A cheap box reduction; the embedder's own resize then antialiases from >= 4x its input size,
            # which keeps its result within a grey level of resizing the full picture (2x is not enough:
            # fine stripes alias by up to 10 levels on average). BENCHMARKS.md has the figures.
            rgb = rgb.reduce(factor)
    fix = _ORIENTATION_FIX.get(orientation)
    if fix is not None:
        rgb = rgb.transpose(fix)
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return DecodedImage(image=rgb, width=width, height=height, format=image_format, captured_at=captured_at)


def _peek(fp: IO[bytes], label: str) -> bytes:
    try:
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


def _open(fp: IO[bytes], label: str, max_pixels: int) -> Image.Image:
    """Parse the header only; turn Pillow's own decompression-bomb checks into DecodeError."""
    _heif_support()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    # Pillow warns above its limit; when ours is at least as strict the warning is a refusal, otherwise our
    # (larger, explicit) budget wins and the warning is noise.
    action = "error" if pillow_limit is not None and max_pixels <= pillow_limit else "ignore"
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError(label, f"declared size is above the decompression-bomb limit ({error})") from None
    except UnidentifiedImageError:
        raise DecodeError(label, "not an image (unrecognised format)") from None
    except MemoryError:
        raise DecodeError(label, "not enough memory to read the header") from None
    except Exception as error:  # broken headers raise SyntaxError, struct.error, ValueError, ...
        raise DecodeError(label, f"corrupt image header ({_short(error)})") from None


def _read_exif(im: Image.Image) -> tuple[int, datetime | None]:
    """Return (orientation, capture time); damaged EXIF counts as absent rather than failing the image."""
    try:
        exif = im.getexif()
        orientation = int(exif.get(ExifTags.Base.Orientation, 1) or 1)
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        captured = _parse_exif_datetime(
            sub.get(ExifTags.Base.DateTimeOriginal), sub.get(ExifTags.Base.OffsetTimeOriginal)
        ) or _parse_exif_datetime(exif.get(ExifTags.Base.DateTime), sub.get(ExifTags.Base.OffsetTime))
    except Exception:
        return 1, None
    return orientation, captured


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


def _to_rgb(im: Image.Image) -> Image.Image:
    """Flatten any mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        return _high_depth_to_rgb(im)
    has_alpha = mode in {"RGBA", "LA", "La", "RGBa", "PA"} or "transparency" in im.info
    if has_alpha:
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        # Pasting through the alpha channel onto white is alpha_composite's result (to the grey level) in one
        # pass instead of four: a fifth of the time on a 2-megapixel wallpaper.
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    values = np.asarray(im, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if im.mode == "F" and float(values.min()) >= 0.0 and top <= 1.0:
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    grey = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _load_failure_reason(error: Exception) -> str:
    message = str(error).lower()
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"a frame is above the decompression-bomb limit ({_short(error)})"
    if "truncated" in message or isinstance(error, EOFError):
        return "truncated image data"
    if isinstance(error, ValueError) and "conversion" in message:
        return f"unsupported colour mode ({_short(error)})"
    return f"corrupt image data ({_short(error)})"


def _short(error: Exception, limit: int = 80) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__: list[str] = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "DecodedImage",
    "decode_image",
]

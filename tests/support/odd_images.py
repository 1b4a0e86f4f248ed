"""Odd image files made in the test: truncated, bit-flipped, forged headers, bombs, refused formats."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

# Formats `retrieval` decodes, as Pillow names them for saving.
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")


def scene(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An asymmetric picture (a gradient and a corner mark), so rotations and flips are visible."""
    w, h = size
    xs = np.linspace(0, 255, w)[None, :].repeat(h, axis=0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, axis=1)
    image = Image.fromarray(np.stack([xs, ys, 255 - xs], axis=-1).astype(np.uint8))
    ImageDraw.Draw(image).rectangle((0, 0, w // 4, h // 4), fill=(255, 255, 255))
    return image


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares width x height but carries almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + (_chunk(b"IEND", b""))
    )


def png16_bomb(side: int) -> bytes:
    """A real side x side 16-bit greyscale PNG of zeros: 1.5 MB for 13000 x 13000 (the fastest zlib level;
    a third of that at the best), which decodes to 338 MB of pixels."""
    row = b"\x00" * (1 + 2 * side)
    packer = zlib.compressobj(1)
    step = 1000
    idat = (
        b"".join(packer.compress(row * min(step, side - top)) for top in range(0, side, step))
        + packer.flush()
    )
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def jpeg_declaring(width: int, height: int) -> bytes:
    data = encoded(scene(), "JPEG")
    sof = data.index(b"\xff\xc0")
    return _patched(data, sof + 5, struct.pack(">HH", height, width))


def gif_declaring(width: int, height: int) -> bytes:
    return _patched(encoded(scene(), "GIF"), 6, struct.pack("<HH", width, height))


def bmp_declaring(width: int, height: int) -> bytes:
    return _patched(encoded(scene(), "BMP"), 18, struct.pack("<ii", width, height))


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF whose ImageWidth and ImageLength tags are rewritten as LONGs."""
    data = encoded(scene(), "TIFF")
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):
            value = width if tag == 256 else height
            data = _patched(data, entry + 2, struct.pack("<HII", 4, 1, value))
    return data


def webp_declaring(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose canvas is declared width x height (24 bits each, minus one)."""
    exif = Image.Exif()
    exif[0x010F] = "camera"  # EXIF makes Pillow write the extended header that holds the canvas size
    data = encoded(scene(), "WEBP", exif=exif)
    assert data[12:16] == b"VP8X"
    return _patched(data, 24, (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))


def isobmff_declaring(fmt: str, width: int, height: int) -> bytes:
    """A HEIF or AVIF file whose image spatial extents (ispe) box declares width x height."""
    data = encoded(scene(), fmt)
    at = data.index(b"ispe") + 8  # box type, then version and flags
    return _patched(data, at, struct.pack(">II", width, height))


DECLARING: dict[str, Callable[[int, int], bytes]] = {
    "JPEG": jpeg_declaring,
    "PNG": png_declaring,
    "GIF": gif_declaring,
    "BMP": bmp_declaring,
    "TIFF": tiff_declaring,
    "WEBP": webp_declaring,
    "HEIF": lambda w, h: isobmff_declaring("HEIF", w, h),
    "AVIF": lambda w, h: isobmff_declaring("AVIF", w, h),
}


def flipped(data: bytes, seed: int, *, flips: int = 8, keep_signature: bool = True) -> bytes:
    """`data` with `flips` bytes inverted at seeded positions (after the first 16 bytes, or anywhere)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    start = 16 if keep_signature and len(data) > 32 else 0
    for at in rng.integers(start, len(out), flips):
        out[at] ^= 0xFF
    return bytes(out)


# -- formats Pillow reads but retrieval refuses -------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n"


def psd_bytes(width: int = 8, height: int = 8) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop document."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: all empty
    return header + sections + struct.pack(">H", 0) + bytes(range(256))[: width * height] * 3


def xpm_bytes() -> bytes:
    return b'/* XPM */\nstatic char *x[] = {\n"2 2 2 1",\n"a c #FF0000",\n"b c #0000FF",\n"ab",\n"ba"\n};\n'


def sun_raster_bytes(width: int = 4, height: int = 4) -> bytes:
    header = struct.pack(">8I", 0x59A66A95, width, height, 8, width * height, 1, 0, 0)
    return header + bytes(width * height)


def pillow_saved(fmt: str) -> bytes:
    image = scene((32, 32)).convert("F") if fmt == "SPIDER" else scene((32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 deprecates writing IM
        return encoded(image, fmt)


# Format -> bytes of a small valid file in it; Pillow opens each of them when not told which formats to use.
REFUSED: dict[str, Callable[[], bytes]] = {
    "EPS": lambda: EPS,
    "PSD": psd_bytes,
    "XPM": xpm_bytes,
    "SUN": sun_raster_bytes,
    **{
        fmt: (lambda fmt=fmt: pillow_saved(fmt))
        for fmt in ("DDS", "SGI", "ICNS", "SPIDER", "IM", "QOI", "PCX")
    },
    **{fmt: (lambda fmt=fmt: pillow_saved(fmt)) for fmt in ("PPM", "TGA", "JPEG2000")},
}

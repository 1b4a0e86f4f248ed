"""Small JPEG thumbnails of indexed images, made once and kept in the index folder (`thumbs/`).

Maps draw hundreds of pictures and the web page a screenful; decoding the full photos for each would cost
seconds. Ingest makes them from the pixels it has just decoded for the model (`thumbnails_of`, no second
decode) in every side that is asked for (`SIDES`); a thumbnail missing all the same (an index ingested with
`--no-thumbnails`, or before thumbnails were made at ingest) is made on first request from the photo.
A thumbnail is named by the image's content id and the start of its content hash (`{id}-{hash12}.jpg`):
SQLite may hand a deleted image's id to a new image, and the hash keeps the old picture from being shown for
the new one. Files are written under a temporary name and renamed, so readers never see half a file; a
cache that cannot be written (a full or read-only disk) is skipped, the thumbnail served all the same.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from pathlib import Path

from PIL import Image

from retrieval.errors import DecodeError
from retrieval.files.decoding import decode_image, flatten_alpha
from retrieval.metadata import MetadataStore

THUMB_SIDE = 96
#: The sides asked for: maps and the web page's map points (96, the server's "small"), the web page's
#: result tiles (256, "large"). Ingest makes both.
SIDES = (THUMB_SIDE, 256)
JPEG_QUALITY = 82


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def make_thumbnail(source: Path | str | bytes, side: int = THUMB_SIDE) -> bytes:
    """JPEG bytes of the upright picture shrunk to fit a side x side square.

    Raises:
        DecodeError: the source is not a readable image.
    """
    image = decode_image(source, min_side=side).image
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return _jpeg(image)


def thumbnails_of(
    image: Image.Image, sides: Sequence[int], full_size: tuple[int, int] | None = None
) -> dict[int, bytes]:
    """JPEG bytes of an already decoded, upright picture (RGB, or RGBA as `keeps_alpha` embedders get it)
    shrunk to fit each side x side square, by side; `image` is left as it is. Each smaller side is made from
    the larger thumbnail (a fraction of the cost of shrinking the picture again).

    `full_size` is the photo's own (upright) size: a side that the picture, shrunk while loading for a small
    model input (classic's JPEGs come at 1/8 scale), is too small to fill as well as the photo would is left
    out, to be made from the photo on request (`make_thumbnail`): no thumbnail is smaller than it should be.
    """
    longest = max(image.size)
    whole = max(full_size) if full_size else longest
    usable = sorted({side for side in sides if longest >= min(side, whole)}, reverse=True)
    if not usable:
        return {}
    shrunk = flatten_alpha(image)
    if shrunk is image:
        shrunk = image.copy()  # thumbnail() works in place: the caller's picture must stay whole
    out: dict[int, bytes] = {}
    for side in usable:
        shrunk.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        out[side] = _jpeg(shrunk)
    return out


def thumbnail_cache(folder: Path, side: int) -> ThumbnailCache:
    """The cache of one side in an index's thumbnail folder: `folder` itself for THUMB_SIDE (the first
    side there was), `folder/SIDE` for the others."""
    folder = Path(folder)
    return ThumbnailCache(folder if side == THUMB_SIDE else folder / str(side), side)


class ThumbnailCache:
    """Thumbnails of one index, in `folder`; `made` counts those decoded from the photos by this object."""

    def __init__(self, folder: Path, side: int = THUMB_SIDE, *, workers: int | None = None) -> None:
        self.folder = Path(folder)
        self.side = side
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.made = 0
        self._folder_made = False

    def path_for(self, content_id: int, digest: str) -> Path:
        return self.folder / f"{content_id}-{digest[:12]}.jpg"

    def put(self, content_id: int, digest: str, data: bytes) -> bool:
        """Keep `data` as the thumbnail of (content id, hash), made elsewhere (by ingest); False when the
        cache cannot be written (the thumbnail is then made on request)."""
        if not self._folder_made:
            with suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
                self._folder_made = True
        return self._write(self.path_for(content_id, digest), data)

    def get_many(
        self,
        meta: MetadataStore,
        items: Sequence[tuple[int | None, str | None]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[bytes | None]:
        """JPEG bytes for each (content id, path of a file holding it), in order; `progress(done, total)` is
        told of each thumbnail that has to be made from its photo (none once they are cached).

        Indexed images (an id) are cached; a file that is not indexed (id None, e.g. a query image) gets an
        uncached thumbnail. None where there is no path, or the file can't be read (moved, deleted or damaged
        since it was indexed).
        """
        hashes = meta.content_hashes([i for i, _ in items if i is not None])
        out: list[bytes | None] = [None] * len(items)
        todo: list[tuple[int, Path | None, str]] = []
        for n, (content_id, path) in enumerate(items):
            if path is None:
                continue
            if content_id is None:
                todo.append((n, None, path))
                continue
            digest = hashes.get(content_id)
            if digest is None:
                continue
            cached = self.path_for(content_id, digest)
            try:
                out[n] = cached.read_bytes()
            except FileNotFoundError:
                todo.append((n, cached, path))
        if todo:
            with suppress(OSError):  # a full or read-only disk: thumbnails are made, just not kept
                self.folder.mkdir(parents=True, exist_ok=True)
            report = progress or (lambda _done, _total: None)
            report(0, len(todo))
            with ThreadPoolExecutor(self.workers, thread_name_prefix="retrieval-thumbs") as pool:
                jobs = {pool.submit(self._make, target, path): (n, target) for n, target, path in todo}
                for done, job in enumerate(as_completed(jobs), 1):
                    n, target = jobs[job]
                    out[n] = data = job.result()
                    self.made += target is not None and data is not None
                    report(done, len(todo))
        return out

    def _make(self, cached: Path | None, source: str) -> bytes | None:
        try:
            data = make_thumbnail(source, self.side)
        except DecodeError:
            return None
        if cached is not None:
            self._write(cached, data)
        return data

    @staticmethod
    def _write(cached: Path, data: bytes) -> bool:
        # Unique per process and thread: two makers of one thumbnail must not share a temporary file.
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError:  # the cache is a convenience: on a full or read-only disk the bytes serve uncached
            with suppress(OSError):
                tmp.unlink()
            return False
        return True

"""Small JPEG thumbnails of indexed images, made once and kept in the index folder (`thumbs/`).

Maps draw hundreds of pictures; decoding the full photos for each map would cost seconds. A thumbnail is
named by the image's content id and the start of its content hash (`{id}-{hash12}.jpg`): SQLite may hand a
deleted image's id to a new image, and the hash keeps the old picture from being shown for the new one.
Files are written under a temporary name and renamed, so readers never see half a file; a cache that cannot
be written (a full or read-only disk) is skipped, the thumbnail served all the same.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from PIL import Image

from retrieval.errors import DecodeError
from retrieval.files.decoding import decode_image
from retrieval.metadata import MetadataStore

THUMB_SIDE = 96
JPEG_QUALITY = 82


def make_thumbnail(source: Path | str | bytes, side: int = THUMB_SIDE) -> bytes:
    """JPEG bytes of the upright picture shrunk to fit a side x side square.

    Raises:
        DecodeError: the source is not a readable image.
    """
    image = decode_image(source, min_side=side).image
    image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """Thumbnails of one index, in `folder`; `made` counts those decoded from the photos by this object."""

    def __init__(self, folder: Path, side: int = THUMB_SIDE, *, workers: int | None = None) -> None:
        self.folder = Path(folder)
        self.side = side
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.made = 0

    def path_for(self, content_id: int, digest: str) -> Path:
        return self.folder / f"{content_id}-{digest[:12]}.jpg"

    def get_many(
        self, meta: MetadataStore, items: Sequence[tuple[int | None, str | None]]
    ) -> list[bytes | None]:
        """JPEG bytes for each (content id, path of a file holding it), in order.

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
            with ThreadPoolExecutor(self.workers, thread_name_prefix="retrieval-thumbs") as pool:
                made = list(pool.map(lambda job: self._make(job[1], job[2]), todo))
            for (n, target, _), data in zip(todo, made, strict=True):
                out[n] = data
                self.made += target is not None and data is not None
        return out

    def _make(self, cached: Path | None, source: str) -> bytes | None:
        try:
            data = make_thumbnail(source, self.side)
        except DecodeError:
            return None
        if cached is None:
            return data
        # Unique per process and thread: two makers of one thumbnail must not share a temporary file.
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError:  # the cache is a convenience: on a full or read-only disk the bytes serve uncached
            with suppress(OSError):
                tmp.unlink()
        return data

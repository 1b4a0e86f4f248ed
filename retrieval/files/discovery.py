"""Finding image files under a folder and fingerprinting their content.

Symlink policy: links are followed while their target stays inside the folder being indexed
(each real directory is visited once, so loops end); a link whose target lies outside the folder
is skipped and reported, so that indexing `~/Photos` never wanders into the rest of the disk.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from retrieval.files.decoding import SUPPORTED_EXTENSIONS

#: How a folder that could not be listed is reported (ingest then forgets none of the files under it).
FOLDER_NOT_READABLE = "folder not readable"


@dataclass(frozen=True)
class FoundFile:
    """A candidate image: its path as the user sees it (under the root) and its stat."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """Something under the root that is not indexed, and why (reported, never fatal). `unsupported`: a file
    whose type is not an image format we read (`.svg`, `.mov`, sidecars), counted rather than listed."""

    path: Path
    reason: str
    unsupported: bool = False


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def discover(root: Path, *, inside: Path | None = None) -> Iterator[FoundFile | Skipped]:
    """Yield image files under `root` in a stable (sorted) order, and what was skipped and why. `inside`:
    the indexed folder whose symlink policy applies, when `root` is a folder in it (default: `root`)."""
    root = Path(root)
    real_root = (inside or root).resolve()
    seen_dirs: set[Path] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = folder.resolve()
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            yield Skipped(folder, f"{FOLDER_NOT_READABLE}: {exc.strerror or exc}")
            continue
        subdirs: list[Path] = []
        files: list[os.DirEntry[str]] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_symlink() and (refused := _refused_symlink(path, real_root)) is not None:
                    yield refused
                    continue
                if entry.is_dir():
                    subdirs.append(path)
                elif entry.is_file():
                    if path.suffix.lower() in SUPPORTED_EXTENSIONS:
                        files.append(entry)
                    else:
                        yield Skipped(path, f"unsupported file type {path.suffix or '(none)'}", True)
            except OSError as exc:
                yield Skipped(path, f"cannot stat: {exc.strerror or exc}")
        for entry in reversed(files):
            try:
                st = entry.stat()
            except OSError as exc:
                yield Skipped(Path(entry.path), f"cannot stat: {exc.strerror or exc}")
                continue
            yield FoundFile(Path(entry.path), st.st_size, st.st_mtime_ns)
        stack.extend(subdirs)  # reversed listing + stack = sorted depth-first order


def _refused_symlink(path: Path, real_root: Path) -> Skipped | None:
    """Why a symlink is not followed (broken, looping, or leading outside the indexed folder), or None."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return Skipped(path, "broken or looping symlink")
    if not _is_inside(target, real_root):
        return Skipped(path, "symlink to outside the indexed folder")
    return None


def discover_paths(root: Path, paths: Iterable[Path]) -> Iterator[FoundFile | Skipped]:
    """What `discover(root)` yields for these paths under `root` (a folder: everything under it), by the same
    rules; a path that does not exist yields nothing. A watch batch lists only the paths its events name."""
    real_root = Path(root).resolve()
    for path in sorted(set(paths)):
        try:
            if path.is_symlink() and (refused := _refused_symlink(path, real_root)) is not None:
                yield refused
                continue
            st = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield Skipped(path, f"cannot stat: {exc.strerror or exc}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from discover(path, inside=real_root)
        elif not stat.S_ISREG(st.st_mode):
            continue
        elif path.suffix.lower() in SUPPORTED_EXTENSIONS:
            yield FoundFile(path, st.st_size, st.st_mtime_ns)
        else:
            yield Skipped(path, f"unsupported file type {path.suffix or '(none)'}", True)


def content_hash(data: bytes) -> str:
    """Identity of an image's bytes: a moved or copied file keeps it, any edit changes it."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def file_hash(fp: BinaryIO) -> str:
    """`content_hash` of an open file's bytes from its position on, read in chunks: memory stays flat."""
    digest = hashlib.file_digest(cast(Any, fp), lambda: hashlib.blake2b(digest_size=20))
    return digest.hexdigest()

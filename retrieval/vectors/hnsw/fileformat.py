"""The default store's files on disk: generation and originals names, fsynced writes, the checksummed
manifest that names the current generation, and the clean-up of files no kept generation names."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import IndexCorruptError, IndexNotFoundError, SchemaTooNewError

if TYPE_CHECKING:  # `stats` reads the manifest without loading hnswlib (or numpy)
    import hnswlib

MANIFEST = "MANIFEST.json"
FORMAT = 1
GEN_FILE = re.compile(r"^g\d{8}\.(slots|codes|graph|quantizer\.npz)(\.tmp)?$")
ORIGINALS_FILE = re.compile(r"^originals-\d{6}\.f32$")


def gen_name(gen: int, kind: str) -> str:
    return f"g{gen:08d}.{kind}"


def originals_name(epoch: int) -> str:
    return f"originals-{epoch:06d}.f32"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(folder: Path, name: str, data: memoryview, *more: memoryview) -> dict[str, Any]:
    """Write `data` (then `more`, in order: no joined copy) to folder/name via a fsynced temporary; returns
    its manifest entry."""
    return write_blocks(folder, name, (data, *more))


def write_blocks(folder: Path, name: str, blocks: Iterable[memoryview]) -> dict[str, Any]:
    """As `write_file`, for blocks made one at a time (each may be freed once written)."""
    tmp = folder / (name + ".tmp")
    size, crc = 0, 0
    with open(tmp, "wb") as f:
        for part in blocks:
            f.write(part)
            size, crc = size + part.nbytes, zlib.crc32(part, crc)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    return {"name": name, "size": size, "crc32": crc}


def write_graph(folder: Path, name: str, graph: hnswlib.Index) -> dict[str, Any]:
    tmp = folder / (name + ".tmp")
    graph.save_index(str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    size, crc = checksum(tmp)
    os.replace(tmp, folder / name)
    return {"name": name, "size": size, "crc32": crc}


def checksum(path: Path) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def manifest_checksum(body: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def write_manifest(folder: Path, body: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "kind": "retrieval.vectorstore", "crc32": manifest_checksum(body), "body": body}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexNotFoundError(f"no vector store in {folder}; create one first") from None
    try:
        doc = json.loads(raw)
        fmt = doc["format"]
        body = doc["body"]
        crc = doc["crc32"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{path} is garbled: {exc}") from None
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise SchemaTooNewError(f"{path} has format {fmt}, newer than {FORMAT}; upgrade retrieval to open it")
    if crc != manifest_checksum(body):
        raise IndexCorruptError(f"{path} is garbled: checksum mismatch")
    return body


def saved_stats(folder: Path) -> dict[str, Any]:
    """What the store last saved, from its manifest alone (no graph, no vectors loaded): the keys of
    `VectorStore.stats()` that do not need the store in memory.

    Raises:
        IndexNotFoundError: no store in `folder`.
        IndexCorruptError, SchemaTooNewError: as `read_manifest`.
    """
    body = read_manifest(folder)
    try:
        disk = sum(int(entry["size"]) for entry in body["files"].values())
        return {
            "n": int(body["n_alive"]),
            "dim": int(body["dim"]),
            "params": body["params"],
            "generation": int(body["generation"]),
            "slots": int(body["n_slots"]),
            "bytes_on_disk": disk + int(body["n_slots"]) * int(body["dim"]) * 4,
            "tuning": body.get("tuning"),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IndexCorruptError(f"{folder / MANIFEST} is garbled: {exc!r}") from None


def verified(folder: Path, entry: dict[str, Any]) -> Path:
    """Path of a generation file after checking its size and checksum against the manifest."""
    path = folder / entry["name"]
    size, crc = checksum(path)
    if size != entry["size"]:
        raise IndexCorruptError(f"{path.name} is truncated or padded: {size} bytes, expected {entry['size']}")
    if crc != entry["crc32"]:
        raise IndexCorruptError(f"{path.name} is garbled: checksum mismatch")
    return path


def remove_unreferenced(folder: Path, keep: set[str]) -> None:
    """Delete generation files, originals and temporaries that neither kept generation names."""
    for path in folder.iterdir():
        name = path.name
        if name in keep:
            continue
        if GEN_FILE.match(name) or ORIGINALS_FILE.match(name) or name == MANIFEST + ".tmp":
            path.unlink(missing_ok=True)

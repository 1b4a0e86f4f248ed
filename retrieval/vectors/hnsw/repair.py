"""Repair of a damaged default store: rebuild it from what it keeps of each vector (id, float32 original)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.errors import IndexCorruptError, UsageError
from retrieval.vectors.hnsw import fileformat
from retrieval.vectors.hnsw.originals import Originals
from retrieval.vectors.hnsw.store import _ROW_BLOCK, StoreParams, VectorStore, _blocks, _State, _unusable


def rebuild(folder: Path, *, dim: int | None = None) -> tuple[VectorStore, int]:
    """Rebuild a damaged store from what it keeps of each vector: its id and its float32 original.

    The quantizer, codes and graph derive from those and are made afresh. Ids come from the current
    generation's slots file if it checks out, else from the newest older one on disk (`dim` is needed
    when the manifest itself is unreadable). Vectors that are missing (originals cut short) or garbled
    (not finite, not unit length) are dropped: their images must be embedded again. Returns the store,
    saved as a new generation and open for writing, and how many vectors were dropped.

    Raises:
        IndexCorruptError: no usable ids or originals are left; the index must be built again.
    """
    folder = Path(folder)
    params, generation, slot_ids, originals_name = StoreParams(), -1, None, None
    # Older slots files may stand in for a bad current one only if they index the same originals file.
    older_ok, current_slots, expected = True, None, None
    try:
        manifest = fileformat.read_manifest(folder)
        older_ok = False
        expected = int(manifest["n_alive"])
        dim, generation = int(manifest["dim"]), int(manifest["generation"])
        originals_name = str(manifest["originals"]["name"])
        older_ok = originals_name in manifest.get("previous", [])
        params = StoreParams.from_dict(manifest["params"])
        current_slots = manifest["files"]["slots"]["name"]
        slot_ids = np.fromfile(fileformat.verified(folder, manifest["files"]["slots"]), dtype=np.int64)
    except (IndexCorruptError, UsageError, OSError, KeyError, TypeError, ValueError):
        pass  # keep what was read; look for the rest on disk
    gen_files = sorted(
        p for p in folder.iterdir() if fileformat.GEN_FILE.match(p.name) and p.suffix == ".slots"
    )
    if gen_files:
        generation = max(generation, int(gen_files[-1].name[1:9]))
    candidates = [p for p in reversed(gen_files) if p.name != current_slots] if older_ok else []
    for path in candidates if slot_ids is None else []:
        ids = np.fromfile(path, dtype=np.int64)
        alive = ids[ids >= 0]
        if (ids >= -1).all() and len(np.unique(alive)) == len(alive):
            slot_ids = ids
            break
    if dim is None or slot_ids is None:
        raise IndexCorruptError(f"{folder} cannot be rebuilt: no readable vector ids are left")
    row_bytes = dim * 4
    if originals_name is None:  # the newest file holding a row for every slot
        need = len(slot_ids) * row_bytes
        fits = [p for p in folder.glob("originals-*.f32") if p.stat().st_size >= need]
        originals_name = max(fits).name if fits else None
    path = folder / (originals_name or fileformat.originals_name(0))
    if not path.is_file():
        raise IndexCorruptError(f"{folder} cannot be rebuilt: the file of original vectors is missing")
    if expected is None:
        expected = int((slot_ids >= 0).sum())
    rows = min(len(slot_ids), path.stat().st_size // row_bytes)
    slot_ids = slot_ids[:rows].copy()
    originals = Originals(path, dim, rows, writable=True)
    for block in _blocks(np.flatnonzero(slot_ids >= 0), _ROW_BLOCK):
        slot_ids[block[_unusable(originals.get(block))]] = -1
    state = _State(
        generation=generation,
        quantizer=None,
        loaded_graph=None,
        codes=np.empty((0, 0), dtype=np.int8),
        slot_ids=slot_ids,
        n_slots=rows,
        n_alive=int((slot_ids >= 0).sum()),
        originals=originals,
        originals_epoch=int(path.stem.split("-")[1]),
        id_index=None,
        files={},
    )
    store = VectorStore(folder, dim, params, state, writable=True)
    store._rebuild(state, refit=True, compact=False)
    store._dirty = True
    store.save()  # also deletes the damaged generation's files
    return store, max(expected - state.n_alive, 0)

"""Each large store's default ef, chosen when it is saved, from probe queries drawn from the store itself.

One default cannot fit every collection. On `benchmarks/vectors.py` data (steep spectrum, tight clusters)
ef 64 already finds 0.986 of the true top-10; on the CLIP-like data (flat spectrum, sub-topics of
near-identical vectors) ef 512 finds 0.984 at 100k and ef 768 only 0.899 at 1M. A fixed 640 was 4 times
too slow for the first and far too inexact for the last.

So a save of a store that the compiled search answers walks PROBES of its own vectors, each one hidden from
its own walk (marked seen before the walk starts: the graph then meets it as it would a new photo of the
same kind, the leave-one-out of cross-validation), at rising ef until their recall@10 against the exact
answer (the probe itself left out) reaches TARGET, once for each depth of the exact re-score in RESCORES:
where vectors differ from their neighbours mostly outside the int8 head (near-duplicate bursts, sub-topics),
the head scores cannot rank the candidates a walk finds and only a deeper re-score recovers them (clusters
of 500 near-identical vectors in 32 dims: recall@10 0.987 re-scoring 48 at ef 1024, 1.0 re-scoring 96).
The cheapest pair reaching TARGET on the probes is recorded in the manifest, and searches use it as their
default. Where none reaches it (CLIP-like data at 1M: 0.973 at ef 4096), the probes try a scan of every
slot instead (its signs, then the best rows' head codes: `signs`), which ranks by the whole int8 head
rather than by a walk's approximate path, and it is kept where it finds more. The probes are image-like
queries: a query from another distribution (text against image embeddings) gets the scan or LOW_HEAD_BOOST
on top of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `retrieval stats` reads a Tuning without numpy (the CLI's quick start)
    import numpy as np

PROBES = 256
#: Recall the probes must reach. Above the 0.98 a user is promised: 256 probes measure recall@10 within
#: about ±0.006 (two standard errors at 0.99), and new queries meet a graph built without them.
TARGET = 0.99
K = 10
LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
#: Depth EVERY re-scores every candidate the walk keeps (the depth recorded is then the ef): nothing then
#: ranks them by their int8 tail, so the tail's weights are never computed nor its codes read. Where the
#: tail is long that is the cheaper way up to a few hundred candidates (`benchmarks/vectors.py` data at
#: 100k, 401 tail dims: ef 128 re-scoring 48 via the tail 270 µs, re-scoring all 128 191 µs, same recall).
EVERY = 0
#: Candidates re-scored exactly from the originals: the first is the store's own default (3 × rescore).
RESCORES = (48, 96, 192, EVERY)
#: What ranking by the tail costs a query, per tail dimension, in `cost`'s units (its weights are a
#: product with a dim × tail matrix; 401 tail dims: ~50 units, the ~60-80 µs measured above).
TAIL_UNIT = 0.125
#: A choice holds while the store stays within this factor of the size it was made at, under the same
#: rotation; a save outside that chooses again.
RETUNE = 1.25


@dataclass(frozen=True)
class Tuning:
    """What a save chose for its searches (ef, re-score depth, or scanning), and what it was chosen on."""

    ef: int
    rescore: int  # candidates re-scored exactly
    recall: float  # the probes' recall@10 at `ef` and `rescore`
    n_alive: int  # vectors in the store when chosen
    quantizer_crc: int  # the rotation it was chosen under (its file's crc32)
    probes: int
    seconds: float  # time the choice took, truth included
    scan: bool = False  # every query scans the head codes: no ef up to the top rung reached the target

    def holds(self, n_alive: int, quantizer_crc: int) -> bool:
        """Whether a store of n_alive vectors under this rotation may keep this choice."""
        return (
            quantizer_crc == self.quantizer_crc and self.n_alive / RETUNE <= n_alive <= self.n_alive * RETUNE
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for people: what searches do by default, and what it was chosen on."""
        how = "a scan of every slot" if self.scan else f"ef {self.ef}"
        depth = "every candidate" if self.rescore >= self.ef and not self.scan else str(self.rescore)
        return (
            f"{how}, {depth} re-scored exactly: chosen at the last save, recall@10 {self.recall:.3f} "
            f"on {self.probes} of its own vectors"
        )

    @classmethod
    def from_dict(cls, d: object) -> Tuning | None:
        """Read back a manifest's entry; None where there is none or it is malformed (the store then uses
        params.ef_search until its next save chooses again)."""
        if not isinstance(d, dict):
            return None
        try:
            tuning = cls(
                ef=int(d["ef"]),
                rescore=int(d["rescore"]),
                recall=float(d["recall"]),
                n_alive=int(d["n_alive"]),
                quantizer_crc=int(d["quantizer_crc"]),
                probes=int(d["probes"]),
                seconds=float(d["seconds"]),
                scan=bool(d.get("scan", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return tuning if tuning.ef >= 1 and tuning.rescore >= 1 else None


def probe_slots(alive: np.ndarray, count: int = PROBES) -> np.ndarray:
    """A spread of live slots to probe with, the same for the same store (seeded by its size)."""
    import numpy as np

    take = min(count, len(alive))
    return np.sort(np.random.default_rng(len(alive)).choice(alive, take, replace=False))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` (m, k) that the same row of `found` holds."""
    import numpy as np

    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size if truth.size else 1.0


def choose(
    search: Callable[[int], np.ndarray],
    truth: np.ndarray,
    ladder: tuple[int, ...] = LADDER,
    target: float = TARGET,
) -> tuple[int, float]:
    """The least rung of `ladder` at which `search(ef)` (the probes' top-k slots) reaches `target` recall
    against `truth`, with that recall; the top rung and its recall where none does. Climbs two rungs at a
    time (about ×2 in ef), then tries the rung skipped, so the whole choice costs about three searches at
    the rung chosen."""
    tried: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in tried:
            tried[i] = recall(search(ladder[i]), truth)
        return tried[i]

    last = len(ladder) - 1
    failed, i = -1, 0
    while at(i) < target:
        if i == last:
            return ladder[last], tried[last]
        failed, i = i, min(i + 2, last)
    if i - failed == 2 and at(i - 1) >= target:
        i -= 1
    return ladder[i], tried[i]


def choose_with_rescore(
    search: Callable[[int, int], np.ndarray],
    truth: np.ndarray,
    ladder: tuple[int, ...] = LADDER,
    rescores: tuple[int, ...] = RESCORES,
    target: float = TARGET,
    tail_dims: int = 0,
) -> tuple[int, int, float]:
    """(ef, rescore, recall): for each re-score depth (EVERY: as many as the ef) the least ef reaching
    `target` (`choose`), and of those pairs the cheapest by `cost` for a store of `tail_dims` int8 tail
    dimensions; the best recall where no pair reaches it. A deeper re-score is tried only on the rungs up
    to the ef already found, where it could be cheaper (re-scoring every candidate can be at the same ef:
    it ranks none by the tail)."""
    best: tuple[int, int, float] | None = None
    for rescore in rescores:
        rungs = ladder if best is None or best[2] < target else tuple(e for e in ladder if e <= best[0])
        if not rungs:
            break
        ef, reached = choose(functools.partial(_at_depth, search, rescore), truth, rungs, target)
        pair = (ef, ef if rescore == EVERY else rescore, reached)
        if best is None or _better(pair, best, target, tail_dims):
            best = pair
    assert best is not None
    return best


def _at_depth(search: Callable[[int, int], np.ndarray], rescore: int, ef: int) -> np.ndarray:
    return search(ef, ef if rescore == EVERY else rescore)


def cost(ef: int, rescore: int, tail_dims: int = 0) -> float:
    """A query's work in units of one node the walk visits: an exact re-score reads a 2 KB float32 row
    but scores one vector (CLIP-like data at 100k: ~3 µs a unit of ef, ~1 µs a re-scored candidate; a
    cold page cache makes re-scores dearer, so they count as half a unit). Re-scoring fewer than the ef
    ranks the candidates by the tail first, TAIL_UNIT a tail dimension."""
    ranked = rescore < ef and tail_dims > 0
    return ef + min(rescore, ef) / 2 + (TAIL_UNIT * tail_dims if ranked else 0.0)


def _better(a: tuple[int, int, float], b: tuple[int, int, float], target: float, tail_dims: int) -> bool:
    """Whether pair a beats b: reaching the target first, then cheaper; neither reaching it, more recall."""
    if (a[2] >= target) != (b[2] >= target):
        return a[2] >= target
    if a[2] >= target:
        return cost(a[0], a[1], tail_dims) < cost(b[0], b[1], tail_dims)
    return a[2] > b[2]

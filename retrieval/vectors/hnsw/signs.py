"""The full scan's first stage: one bit per rotated coordinate of every slot, scored by popcounts.

A query that scans (text against images, or a store whose graph does not reach the target) used to score
every slot's whole int8 head: 444 bytes a row on the CLIP-like data, 444 MB a query at 1M, ~30 ms on two
cores before the selection. Here each slot also keeps the sign of each of its rotated coordinates (64 bytes
at 512 dims, derived from the int8 codes the store holds anyway), and a query scores those first: its
rotated coordinates rounded to BITS-bit integers u, a row's score is sum u[d] over the coordinates whose
bit is set (a popcount per bit plane of u and per 64 coordinates, the RaBitQ-style asymmetric estimate),
then the best `keep` rows are scored on their whole int8 head as before. The sign keeps every coordinate,
where a head's leading ones alone miss a text query (most of its energy lies outside them): on the
CLIP-like data at 1M, 200 queries, the true top-10 held among the best 2 % / 4 % by sign score 0.9995 /
1.0 for image queries and 0.985 / 0.997 for text ones (the first 128 head coordinates: 0.96 for text at
8 % of 100k). An uncentred rotation's leading coordinate (the shared mean direction) has one sign in every
row, so coordinates whose bit is (almost) constant get no weight: they would take the query's range.

End to end (benchmarks/scan_stage.py, 1M CLIP-like vectors, 200 queries, two cores): a text query's scan
52 → 18 ms at recall@10 0.9965 → 0.9935; the store's image queries (its save chose the scan) 50 → 17 ms,
0.9965 → 0.9915. Tried and not kept: a count of every score in the kernel to place the cut (the kernel
took 1.5× as long), rows laid out in blocks of 64 for the vector unit (12 % faster, not worth a second
layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from retrieval.vectors.hnsw import scan
from retrieval.vectors.hnsw.filtered import HeadCodes

#: Bits of a query's rounded coordinates: its integers run over ±(2**(BITS-1) - 1). On the CLIP-like data at
#: 100k, image queries, the true top-10 among the best 2 % by sign score: 0.962 / 0.989 / 0.993 rounded to
#: 4 / 5 / 6 bits (the leading coordinate left out; 0.889 with 4 bits where it takes part) against 0.994
#: unrounded; at 1M, 2 %, 5 bits 0.9985 image, 0.985 text, as unrounded. The kernel is written for 5.
BITS = 5
LEVELS = (1 << (BITS - 1)) - 1
#: A coordinate set (or clear) in more than 1 - RARE of the rows at build carries no weight.
RARE = 0.001
#: The scan's second stage takes the best max(KEEP_MIN, KEEP_SHARE · n) rows by sign score (text queries on
#: the CLIP-like data: 0.994 of the true top-10 at 8,192 of 100k, 0.997 at 4 % of 1M); where that is most
#: of the store, every row's head is scored instead.
KEEP_SHARE = 0.04
KEEP_MIN = 8192
#: A byte of signs costs a scan about SIGN_COST bytes of int8 heads: its popcounts bound it, not memory (1M
#: random rows on two cores: 12.7 ms for their 64 MB of signs, 34.8 ms for 444 MB of heads).
SIGN_COST = 2.5
#: The cut between the stages is read from the scores of every n // SAMPLE-th row.
SAMPLE = 1 << 13
#: Scans of this many rows or more split them among the cores (the kernel is bound by its popcounts, ~17 ns
#: a 512-bit row on one core here, not by memory).
PARALLEL_ROWS = 1 << 15
_BLOCK = 16384


@intrinsic
def _popcount(typingctx, x):
    """The number of set bits of a uint64 (LLVM's ctpop: one instruction on x86-64 with POPCNT)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@dataclass(eq=False)
class Signs:
    """Row s: the signs of slot s's rotated coordinates (head from `head`, tail from the store's tail
    codes), bit d of word d // 64 set where coordinate d is positive; `weighted` the coordinates a query
    weighs."""

    head: HeadCodes
    words: np.ndarray  # (n, words) uint64
    weighted: np.ndarray  # (dim,) bool
    sample: np.ndarray  # every `stride`-th row of words, contiguous (read at a stride, ~4× slower a row)
    stride: int

    @classmethod
    def build(cls, head: HeadCodes, tail: np.ndarray, n_slots: int) -> Signs:
        """From the int8 codes of the first n_slots slots: `head` and the tail codes `tail` (rows by slot)."""
        dim = head.quantizer.dim
        empty = np.zeros((0, -(-dim // 64)), dtype=np.uint64)
        out = cls(head, empty, np.ones(dim, dtype=bool), empty, 1)
        out.extend(tail, n_slots)
        set_share = out._share_set()
        out.weighted = (set_share > RARE) & (set_share < 1 - RARE)
        return out

    def extend(self, tail: np.ndarray, n_slots: int) -> None:
        """Add the slots encoded since the last call."""
        start = len(self.words)
        if n_slots <= start:
            return
        quantizer, h = self.head.quantizer, self.head.quantizer.head_dims
        # coordinate = offset + step · code, positive where code exceeds -offset / step
        head_zero = -self.head.offset / self.head.step
        tail_zero = -quantizer.offset / quantizer.scale
        grown = np.zeros((n_slots, self.words.shape[1]), dtype=np.uint64)
        grown[:start] = self.words
        packed = grown.view(np.uint8)
        for lo in range(start, n_slots, _BLOCK):
            hi = min(lo + _BLOCK, n_slots)
            bits = np.concatenate([self.head.rows[lo:hi, :h] > head_zero, tail[lo:hi] > tail_zero], axis=1)
            part = np.packbits(bits, axis=1, bitorder="little")
            packed[lo:hi, : part.shape[1]] = part
        self.words = grown
        self.stride = max(1, n_slots // SAMPLE)
        self.sample = np.ascontiguousarray(grown[:: self.stride])

    def _share_set(self) -> np.ndarray:
        """(dim,) share of the rows with each coordinate's bit set."""
        dim = self.head.quantizer.dim
        counts = np.zeros(dim, dtype=np.int64)
        for lo in range(0, len(self.words), _BLOCK):
            part = self.words[lo : lo + _BLOCK].view(np.uint8)
            counts += np.unpackbits(part, axis=1, bitorder="little")[:, :dim].sum(axis=0, dtype=np.int64)
        return counts / max(len(self.words), 1)

    def planes(self, rotated: np.ndarray) -> np.ndarray:
        """(BITS, words) uint64 bit planes of the query's rotated coordinates rounded to ±LEVELS: plane j
        holds bit j of each one's two's complement."""
        q = np.where(self.weighted, rotated, 0.0)
        top = float(np.abs(q).max())
        u = np.rint(q * (LEVELS / top)).astype(np.int64) if top > 0 else np.zeros(len(q), dtype=np.int64)
        out = np.zeros((BITS, self.words.shape[1]), dtype=np.uint64)
        for j in range(BITS):
            part = np.packbits((u >> j) & 1, bitorder="little")
            out[j].view(np.uint8)[: len(part)] = part
        return out

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.sample.nbytes


def keep_of(n_alive: int) -> int:
    """Rows a scan takes to its second stage."""
    return max(KEEP_MIN, int(KEEP_SHARE * n_alive))


def keep_for(n_alive: int, least: int) -> int | None:
    """Rows a scan of n_alive live slots takes to its second stage (at least `least`), or None where that is
    most of the store: every head is scored instead."""
    keep = max(keep_of(n_alive), least)
    return keep if 2 * keep < n_alive else None


def scan_reads(n_slots: int, n_alive: int, head_dims: int, dim: int, least: int) -> float:
    """What one scan costs, in bytes of int8 head rows: every slot's signs at SIGN_COST a byte and the kept
    rows' heads (`keep_for`), or every slot's head."""
    keep = keep_for(n_alive, least)
    if keep is None:
        return float(n_slots * head_dims)
    return SIGN_COST * n_slots * 8 * -(-dim // 64) + keep * head_dims


def best(signs: Signs, rotated: np.ndarray, keep: int) -> np.ndarray:
    """Slots of about the best `keep` rows by sign score, ascending: those at or above the score that
    ranks keep-th in a sample of SAMPLE rows (a count of every score cost the kernel half its time again)."""
    planes = signs.planes(rotated)
    words, n = signs.words, len(signs.words)
    sample = np.empty(len(signs.sample), dtype=np.int64)
    _scores(signs.sample, planes, sample)
    rank = min(len(sample), -(-keep // signs.stride))
    bar = int(np.partition(sample, len(sample) - rank)[len(sample) - rank])

    def above(lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, dtype=np.int64)
        return out[: _above(words[lo:hi], planes, bar, out)] + lo

    return np.concatenate(scan.split(n, scan.cores() if n >= PARALLEL_ROWS else 1, above))


@njit(cache=True, nogil=True, inline="always")
def _score(words, r, planes):
    """Row r's sum of the query's rounded coordinates where its bit is set: planes 0-3 hold bits 0-3 of
    each coordinate's two's complement, plane 4 its sign bit (weight -16). Written out: a loop over the
    planes ran ~2× slower."""
    a0 = np.uint64(0)
    a1 = np.uint64(0)
    a2 = np.uint64(0)
    a3 = np.uint64(0)
    a4 = np.uint64(0)
    for w in range(words.shape[1]):
        x = words[r, w]
        a0 += _popcount(x & planes[0, w])  # type: ignore[call-arg]  # numba supplies typingctx
        a1 += _popcount(x & planes[1, w])
        a2 += _popcount(x & planes[2, w])
        a3 += _popcount(x & planes[3, w])
        a4 += _popcount(x & planes[4, w])
    low = a0 + (a1 << np.uint64(1)) + (a2 << np.uint64(2)) + (a3 << np.uint64(3))
    return np.int64(low) - np.int64(a4 << np.uint64(4))


@njit(cache=True, nogil=True)
def _scores(words, planes, out):
    for r in range(words.shape[0]):
        out[r] = _score(words, r, planes)


@njit(cache=True, nogil=True)
def _above(words, planes, bar, out):
    """Writes the rows scoring at least `bar` to out, in order; returns how many."""
    m = 0
    for r in range(words.shape[0]):
        if _score(words, r, planes) >= bar:
            out[m] = r
            m += 1
    return m

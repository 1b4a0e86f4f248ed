"""Arithmetic precision of an embedder's forward: fp32, int8 (CPU) or fp16 (CUDA). No torch here (the CLI
checks a precision before any model loads); retrieval/embedders/quantize.py makes the int8 models.

The precision is part of an embedder's `id` (":int8", ":fp16"; fp32 adds nothing, so indexes built before
precisions existed are fp32), because vectors from two precisions differ slightly and an index must not mix
them.
"""

from __future__ import annotations

from typing import Literal, cast

from retrieval.errors import UsageError

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")
#: The precision of a new index when none is asked for. fp32: int8 did not keep retrieval the same on real
#: photos (recall@10 against fp32 below 0.99, BENCHMARKS.md "Ingest throughput"), so it is opt-in.
DEFAULT_PRECISION: Precision = "fp32"
#: Families with an int8 forward. A ResNet is convolutions, which torch's dynamic int8 does not cover; static
#: int8 (FX graph mode, calibrated) was measured and not kept, so a ResNet asked for int8 runs at fp32.
INT8_FAMILIES: tuple[str, ...] = ("clip",)


def check_precision(precision: str | None, device: str) -> Precision:
    """The canonical precision for `device` ("cpu" or "cuda..."): None is the default; refuses what the
    device cannot run.

    Raises:
        UsageError: an unknown precision, fp16 off CUDA, or int8 on CUDA.
    """
    if precision is None:
        return DEFAULT_PRECISION
    wanted = precision.strip().lower()
    if wanted not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    cuda = device.startswith("cuda")
    if wanted == "fp16" and not cuda:
        raise UsageError(f"precision fp16 runs on CUDA only, not on {device}; use fp32 or int8 on a CPU")
    if wanted == "int8" and cuda:
        raise UsageError(f"precision int8 runs on the CPU only, not on {device}; use fp16 or fp32 on CUDA")
    return wanted


def effective_precision(family: str, precision: Precision) -> Precision:
    """What a family really runs when asked for `precision`: int8 falls back to fp32 where it has none."""
    return "fp32" if precision == "int8" and family not in INT8_FAMILIES else precision


def precision_suffix(precision: str) -> str:
    """What a precision adds to an embedder id: nothing for fp32."""
    return "" if precision == "fp32" else f":{precision}"


def precision_of_id(embedder_id: str | None) -> Precision:
    """The precision an embedder id records (fp32 when it records none, as ids made before precisions)."""
    tail = (embedder_id or "").rsplit(":", 1)[-1]
    return cast(Precision, tail) if tail in ("int8", "fp16") else "fp32"


__all__ = [
    "DEFAULT_PRECISION",
    "INT8_FAMILIES",
    "PRECISIONS",
    "Precision",
    "check_precision",
    "effective_precision",
    "precision_of_id",
    "precision_suffix",
]

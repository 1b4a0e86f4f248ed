"""What the benchmark scripts share: an environment fit for timing, and their sections of BENCHMARKS.md.

Each script runs as `python benchmarks/NAME.py`, so this folder is on `sys.path` and `import _common` works
before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

# Set on these machines; they slow numpy. Benchmarks remove them from their own environment, tests never do.
SLOW_NUMPY_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_DROPPED_MARK = "BENCH_DROPPED_ENV"


def run_without_slow_numpy_env(extra: dict[str, str] | None = None) -> None:
    """Re-execute this script without SLOW_NUMPY_ENV (and with `extra` set), unless it already runs so.

    Call it at the top of a script, under `if __name__ == "__main__"`, before numpy or torch is imported: the
    variables are read when OpenBLAS loads.
    """
    extra = extra or {}
    if _DROPPED_MARK in os.environ or (
        not any(name in os.environ for name in SLOW_NUMPY_ENV)
        and all(os.environ.get(k) == v for k, v in extra.items())
    ):
        return
    env = {k: v for k, v in os.environ.items() if k not in SLOW_NUMPY_ENV} | extra
    env[_DROPPED_MARK] = ",".join(name for name in SLOW_NUMPY_ENV if name in os.environ) or "-"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def dropped_env() -> str:
    """Which of SLOW_NUMPY_ENV this run removed, for the report: a comma list, or "" when none was set."""
    return os.environ.get(_DROPPED_MARK, "-").strip("-")


def env_note() -> str:
    """One sentence for a report on what the environment change did."""
    dropped = dropped_env()
    if dropped:
        return f"the script removed {dropped}, which slow numpy, from its own environment"
    return "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE were not set; the script removes them from its own environment"


def write_section(body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` (which starts with its "## " heading line) in place of that section, or at the end."""
    heading = body.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with a '## ' heading, not {heading!r}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("\n" + heading + "\n")
    if start < 0:
        new = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(heading) + 1)
        new = text[: start + 1] + body.rstrip("\n") + "\n" + (text[nxt:] if nxt >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


# Queries each contender answers before the next one takes its turn.
INTERLEAVE = 50


def rss_kb() -> dict[str, int]:
    """This process's resident anonymous and file-backed memory, in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def interleaved_best_times(
    searches: Sequence[Callable[[Any], Any]], counts: Sequence[int], queries: Any, k: int, rounds: int
) -> list[tuple[Any, Any]]:
    """Time every search on each block of INTERLEAVE queries in turn, `rounds` times, keeping each query's
    fastest time: load from other jobs on a shared machine then falls on all contenders alike and is mostly
    filtered out. Search i answers the first counts[i] queries, one per call. Returns, per search, the
    seconds per query and the (count, k) ids it returned."""
    import numpy as np

    lat = [np.full(n, np.inf) for n in counts]
    ids = [np.empty((n, k), dtype=np.int64) for n in counts]
    for _ in range(rounds):
        for start in range(0, len(queries), INTERLEAVE):
            for search, n, c_lat, c_ids in zip(searches, counts, lat, ids, strict=True):
                for i in range(start, min(start + INTERLEAVE, n)):
                    t = time.perf_counter()
                    c_ids[i] = search(queries[i])
                    c_lat[i] = min(c_lat[i], time.perf_counter() - t)
    return list(zip(lat, ids, strict=True))

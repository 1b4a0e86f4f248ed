"""Ray ingest next to the local pipeline, on the same photos, in one run.

    .venv/bin/python benchmarks/ray_ingest.py [--set library] [--count 200] [--model resnet18]
        [--workers 1 2] [--rounds 2] [--batch 32] [--no-write]

Photos: a set from benchmarks/photos.py (default `library`: 12 MP camera JPEGs with 10 % PNG/WebP originals,
cached outside the repo). The model has random weights (speed only, the vectors mean nothing). One local Ray
runtime is started for the run with every core of this machine (its start-up time is reported on its own);
then each round times, into fresh indexes:

- local: `Engine.ingest(folder)`, the default pipeline (decode threads + the model in this process);
- ray, N workers: `Engine.ingest(folder, ray_address=..., workers=N)` on that runtime: reading and hashing
  here, decoding and embedding in N Ray actors (a model each, loaded at the start of every ingest, which
  is part of the figure), results streamed back and written by the same code.

Driver reads: every file of the photo folder that this process (the driver) opens is counted with its size
(io.open watched), per new image; the target for Ray is 0 (the workers read the photos), against about
one file's size locally, where this process decodes.

Figures are medians over rounds of images per second (wall clock); "vs local" is the median over rounds of
ray/local within a round (the pairs share the machine's load), and Ray's overhead is 1 minus that. The
run also checks that the two indexes agree (ids, failures, largest vector difference). Writes its section of
BENCHMARKS.md ("## Ray ingest vs local") unless --no-write.
"""

from __future__ import annotations

import os
import sys

from _common import env_note, run_without_slow_numpy_env, write_section

if __name__ == "__main__":
    run_without_slow_numpy_env()

# First, as in the CLI: importing retrieval sets torch's OpenMP wait policy before torch loads.
import retrieval  # noqa: F401

# isort: split
import argparse
import datetime
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from photos import DEFAULT_CACHE, baseline_set, describe, library_set, lossless_set  # noqa: E402

from retrieval.embedders import RandomWeightsWarning  # noqa: E402
from retrieval.engine import Engine  # noqa: E402

HEADING = "## Ray ingest vs local"
_OPENED: dict[str, int] = {"bytes": 0}
_WATCHED: list[str] = []


def _watch_driver_reads(folder: Path) -> None:
    """Count the bytes of photo files this process opens (each is read whole: hashed, or decoded)."""
    import builtins
    import io

    real = io.open
    _WATCHED.append(str(folder))

    def watched(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and any(str(file).startswith(w) for w in _WATCHED):
            _OPENED["bytes"] += os.path.getsize(file)
        return real(file, *args, **kwargs)

    io.open = watched  # type: ignore[assignment]  # what Path.open calls
    builtins.open = watched  # type: ignore[assignment]


def ingest(home: Path, name: str, folder: Path, model: str, batch: int, **options: Any) -> tuple[float, int]:
    """Seconds and files embedded for one ingest of `folder` into a fresh index `name`."""
    shutil.rmtree(home / name, ignore_errors=True)
    with Engine(name, home=home, model=model, pretrained=None, device="cpu", batch_size=batch) as engine:
        engine.embedder  # noqa: B018 - the driver's model loads before the clock starts, in both cases
        before = _OPENED["bytes"]
        started = time.perf_counter()
        report = engine.ingest(folder, **options)
        seconds = time.perf_counter() - started
    if report.failed:
        raise SystemExit(f"ingest of {folder} failed: {report.failed[:3]}")
    READS[name if name != "fixed" else "_fixed"] = (_OPENED["bytes"] - before) / max(1, report.embedded)
    return seconds, report.embedded


READS: dict[str, float] = {}


def agreement(home: Path, a: str, b: str) -> dict[str, Any]:
    """Do two indexes of one folder record the same images: ids, files, failures, and vectors within what?"""

    def rows(name: str) -> tuple[list[Any], list[Any], list[Any]]:
        db = sqlite3.connect(home / name / "meta.sqlite")
        try:
            return tuple(
                sorted(db.execute(sql).fetchall())
                for sql in (
                    "SELECT id, hash, width, height, format FROM contents",
                    "SELECT id, path, content_id FROM files",
                    "SELECT path, reason FROM failures",
                )
            )
        finally:
            db.close()

    with Engine(a, home=home) as ea, Engine(b, home=home) as eb:
        ids = sorted(int(i) for i in ea.store.ids())
        same_ids = ids == sorted(int(i) for i in eb.store.ids())
        diff = (
            float(np.abs(ea.store.vectors(ids) - eb.store.vectors(ids)).max()) if same_ids else float("nan")
        )
    return {"rows": rows(a) == rows(b), "ids": same_ids, "max_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="library", choices=["library", "lossless", "baseline"])
    parser.add_argument("--count", type=int, default=200, help="files in the library/baseline set")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actors to try")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RandomWeightsWarning)

    import ray

    makers = {"library": library_set, "baseline": baseline_set}
    folder = makers[args.set](args.count, args.cache) if args.set in makers else lossless_set(args.cache)
    files = describe(folder)
    _watch_driver_reads(folder.resolve())
    _WATCHED.append(str(folder))
    cpus = os.cpu_count() or 1
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    runtime_s = time.perf_counter() - started

    rates: dict[str, list[float]] = {"local": []}
    for w in args.workers:
        rates[f"ray, {w} worker{'s' if w > 1 else ''}"] = []
    checks = []
    fixed: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="retrieval-ray-bench-") as tmp:
        home = Path(tmp)
        two = home / "two-photos"  # the fixed cost of a run: actors starting, a model loading in each
        two.mkdir()
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".jpg")[:2]:
            os.link(path, two / path.name)
        try:
            for r in range(args.rounds):
                seconds, n = ingest(home, "local", folder, args.model, args.batch)
                rates["local"].append(n / seconds)
                print(f"round {r + 1}: local {n / seconds:.2f} img/s", flush=True)
                for w, label in zip(args.workers, list(rates)[1:], strict=True):
                    seconds, n = ingest(
                        home, f"ray{w}", folder, args.model, args.batch, ray_address="local", workers=w
                    )
                    rates[label].append(n / seconds)
                    print(f"round {r + 1}: {label} {n / seconds:.2f} img/s", flush=True)
                    if r == 0:
                        checks.append((label, agreement(home, "local", f"ray{w}")))
            # After the rounds, so that this process's model is warm as in a long local run; Ray's actors
            # start cold every time, which is the point.
            fixed["local"], embedded = ingest(home, "fixed", two, args.model, args.batch)
            assert embedded == 2, embedded
            for w, label in zip(args.workers, list(rates)[1:], strict=True):
                fixed[label], _ = ingest(
                    home, "fixed", two, args.model, args.batch, ray_address="local", workers=w
                )
        finally:
            ray.shutdown()

    load_end = os.getloadavg()[0]
    index_of = {"local": "local"} | {
        label: f"ray{w}" for w, label in zip(args.workers, list(rates)[1:], strict=True)
    }
    lines = [
        "| pipeline | img/s (median) | rounds | vs local (per round) | overhead | 2 photos (fixed cost) "
        "| driver reads / new image |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, values in rates.items():
        # Each round's ratio to that round's local run: rounds differ with the machine's load, pairs less.
        ratio = statistics.median(v / base for v, base in zip(values, rates["local"], strict=True))
        overhead = "" if label == "local" else f"{100 * (1 - ratio):.0f} %"
        rounds = ", ".join(f"{v:.2f}" for v in values)
        lines.append(
            f"| {label} | {statistics.median(values):.2f} | {rounds} | {ratio:.2f}× | {overhead} "
            f"| {fixed[label]:.1f} s | {READS[index_of[label]] / 1e6:.2f} MB |"
        )
    table = "\n".join(lines)
    agree = "; ".join(
        f"{label}: rows {'identical' if c['rows'] else 'DIFFERENT'}, "
        f"ids {'identical' if c['ids'] else 'DIFFERENT'}, largest vector difference {c['max_diff']:.1e}"
        for label, c in checks
    )
    kinds = ", ".join(
        f"{k['files']} {kind} (avg {k['megapixels']} MP, {k['megabytes']} MB)"
        for kind, k in files["kinds"].items()
    )
    command = "python benchmarks/ray_ingest.py " + " ".join(sys.argv[1:])
    body = (
        f"{HEADING}\n\n"
        f"Command: `{command.strip()}` ({datetime.date.today()}, {cpus} cores, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, ray {ray.__version__}; "
        f"{env_note()}). Model {args.model} with random weights (speed only), batch {args.batch}, CPU. "
        f"Set `{args.set}` from `benchmarks/photos.py`: {kinds}. One local Ray runtime with {cpus} CPUs, "
        f"started once in {runtime_s:.1f} s (not counted below); each Ray ingest includes starting its "
        f"actors and loading a model in each (the last column: an ingest of 2 of the photos, once, after "
        f"the rounds). Each round ingests the folder into fresh indexes, local first. Load average (1 min) "
        f"{load_start:.2f} at the start, {load_end:.2f} at the end.\n\n"
        f"{table}\n\n"
        f"Same index either way (first round): {agree}.\n\n" + READING
    )
    print(body)
    if not args.no_write:
        write_section(body)


READING = """How to read it. On one machine Ray can only add work: each actor pays for its own model and
start-up, and the results travel through Ray's object store; the cores are the same. The driver reads no
photo (last column): it lists the folder (a stat per file), the workers read each new file once, hash it,
skip the content the index already has and decode and embed the rest, and the driver's share per image is
the SQLite write. What Ray buys is more machines: the model and the decoders run on every node of the
cluster (a GPU each where there are GPUs). The overhead above is therefore the price of the plumbing on one
machine, not a forecast for a cluster, where the throughput is bound by the workers together and the
driver's listing and writes.
"""


if __name__ == "__main__":
    main()

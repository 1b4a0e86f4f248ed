"""Export and watch at scale: `Engine.export` of a large synthetic index (time, memory), and what a watch
batch costs: the full rescan (a no-op incremental ingest of the whole folder) that watching starts with, and
a batch naming one new file, which ingests only that path.

    .venv/bin/python benchmarks/export_watch.py [--n 100000] [--dim 512] [--row-group N] [--keep DIR]
        [--write]

The index is built without decoding: N empty files on disk (1,000 to a folder), a database row for each (as
an ingest records them, under the `classic` model's name) and N synthetic 512-dim vectors
(benchmarks/vectors.py) in the default store. Then:

1. a no-op ingest of the folder, twice: what every watch batch costs before it embeds anything (listing and
   stat-ing every file, reading every row under the folder, opening the store writable); then, twice, a new
   file copied in and one ingest of just its path (`Engine.ingest(paths=[it])`, what a watch batch whose
   events name that file runs): its bytes are those of an indexed image, so it is linked to that content
   (hashed, not decoded: the index's vectors are synthetic) - the batch's own cost, less one embedding;
2. an export to Parquet in a child process that samples its own anonymous memory (RssAnon, which leaves out
   the memory-mapped vectors the page cache holds) every 10 ms: the figure before the export starts (database
   open, vector store loaded) and the peak during it.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow numpy on this machine, are removed from this command's
environment (never from the tests').
"""

from __future__ import annotations

import os
import sys

from _common import env_note, rss_kb, run_without_slow_numpy_env, write_section

if __name__ == "__main__":
    run_without_slow_numpy_env()

import argparse
import json
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from vectors import make

from retrieval.embedders import create_embedder
from retrieval.engine import MANIFEST_FORMAT, Engine
from retrieval.files.discovery import content_hash
from retrieval.metadata import DB_NAME, IngestWriter, MetadataStore, utcnow
from retrieval.vectors import StoreSpec, create_store

#: The bytes of the file a measured watch batch adds: image 0's content (its hash is recorded as theirs).
COPY = b"a copy of image 0, as the benchmark's watch batch adds it"


def build(home: Path, photos: Path, n: int, dim: int) -> None:
    """An index named "big" of `n` files under `photos`, each its own image with a `dim` vector."""
    paths = []
    for i in range(n):
        path = photos / f"d{i // 1000:04d}" / f"IMG_{i:07d}.jpg"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        paths.append(path)
    folder = home / "big"
    folder.mkdir(parents=True)
    spec = StoreSpec.for_new_index("big", None, None)
    emb = create_embedder("classic")
    with MetadataStore(folder / DB_NAME) as meta:
        with meta.session() as s:
            meta.set_manifest(
                s,
                format=MANIFEST_FORMAT,
                model="classic",
                pretrained=None,
                weights=None,
                embedder_id=emb.id,
                dim=dim,  # not the classic model's: this index is never embedded into, only rescanned
                preprocess=emb.preprocess_id,
                **spec.to_manifest(),
                created_at=utcnow().isoformat(timespec="seconds"),
            )
        base, _ = make(n=n, dim=dim, n_queries=1, seed=0)
        store = create_store(spec, folder / "vectors", dim)
        with IngestWriter(meta) as w:
            root_id = w.root_id(str(photos.resolve()))
            ids: list[int] = []
            for start in range(0, n, 10_000):
                contents = []
                for i in range(start, min(start + 10_000, n)):
                    st = paths[i].stat()
                    content = w.content(
                        hash=content_hash(COPY) if i == 0 else f"{i:040x}",
                        stale_id=None,
                        width=4032,
                        height=3024,
                        format="JPEG",
                        captured_at=datetime(2024, 1 + i % 12, 1 + i % 28, 12, 0, 0),
                    )
                    w.add_file(
                        root_id=root_id,
                        path=str(paths[i].resolve()),
                        content_id=content.id,
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                    )
                    contents.append(content)
                w.mark_embedded(contents)
                ids.extend(c.id for c in contents)
            store.add(np.array(ids, dtype=np.int64), base)  # in one go: the graph is built once
            store.save()
            w.commit()
        store.close()


def rescan(home: Path, photos: Path) -> list[float]:
    times = []
    for _ in range(2):
        with Engine("big", home=home) as engine:
            started = time.perf_counter()
            report = engine.ingest(photos)
            times.append(time.perf_counter() - started)
            assert report.unchanged > 0 and report.embedded == 0 and report.removed == 0, report
    return times


def one_new_file(home: Path, photos: Path) -> list[float]:
    """Seconds for an ingest of only one new file's path, twice; the files are forgotten again after."""
    times, added = [], []
    for run in range(2):
        path = photos / "d0000" / f"NEW_{run}.jpg"
        path.write_bytes(COPY)
        added.append(path)
        with Engine("big", home=home) as engine:
            started = time.perf_counter()
            report = engine.ingest(photos, paths=[path])
            times.append(time.perf_counter() - started)
            assert report.added == 1 and report.unchanged == 0 and report.removed == 0, report
    for path in added:
        path.unlink()
    with Engine("big", home=home) as engine:
        assert engine.ingest(photos, paths=added).removed == 2
    return times


def export_child(home: Path, out: Path, row_group: int) -> None:
    """Run in a child: export, sampling RssAnon; prints one JSON line."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb()["RssAnon"])
            time.sleep(0.01)

    with Engine("big", home=home) as engine:
        engine.store  # noqa: B018 - loaded before the baseline
        import pyarrow.parquet  # noqa: F401 - imported before the baseline too

        baseline = rss_kb()["RssAnon"]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        report = engine.export(out, row_group=row_group)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    print(
        json.dumps(
            {
                "baseline_kb": baseline,
                "peak_kb": peak[0],
                "seconds": seconds,
                "rows": report.rows,
                "bytes": report.bytes,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--row-group", type=int, default=10_000, help="Rows per Parquet row group.")
    parser.add_argument("--keep", type=Path, help="Build in (and keep) this folder; reuse an index there.")
    parser.add_argument("--write", action="store_true", help="Write the section of BENCHMARKS.md.")
    parser.add_argument("--export-child", nargs=2, metavar=("HOME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(Path(args.export_child[0]), Path(args.export_child[1]), args.row_group)
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="export-watch-"))
    home, photos = work / "home", work / "photos"
    load = os.getloadavg()
    if not (home / "big" / DB_NAME).exists():
        started = time.perf_counter()
        build(home, photos, args.n, args.dim)
        print(f"built {args.n} rows in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    times = rescan(home, photos)
    batch = one_new_file(home, photos)
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--export-child",
            str(home),
            str(work / "big.parquet"),
            "--row-group",
            str(args.row_group),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    exported = json.loads(child.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    mib = 1024
    body = "\n".join(
        [
            "## Export and watch at scale",
            "",
            f"`benchmarks/export_watch.py --n {args.n} --dim {args.dim} --row-group {args.row_group}`: a "
            f"synthetic index of {args.n:,} "
            f"images ({args.dim}-dim vectors, default store), load {load[0]:.1f} before and "
            f"{load_after[0]:.1f} after on 2 shared cores; {env_note()}.",
            "",
            "| what | figure |",
            "|---|---|",
            f"| export to Parquet | {exported['seconds']:.1f} s "
            f"({exported['rows'] / exported['seconds']:,.0f} rows/s), "
            f"{exported['bytes'] / mib / mib:.0f} MiB file |",
            f"| export memory (RssAnon) | {exported['baseline_kb'] / mib:.0f} MiB before (index open, store "
            f"loaded), peak {exported['peak_kb'] / mib:.0f} MiB during: "
            f"+{(exported['peak_kb'] - exported['baseline_kb']) / mib:.0f} MiB |",
            f"| one watch batch's rescan (no-op ingest of {args.n:,} files) | "
            f"{min(times):.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)}) |",
            f"| one watch batch naming one new file (ingest of its path only) | {min(batch):.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in batch)}) |",
            "",
        ]
    )
    print(body)
    if args.write:
        write_section(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reliability stress: a large ingest, then deletions and edits, with the index checked after every step.

    .venv/bin/python benchmarks/stress.py [--n 5000] [--size 64x48] [--seed 0] [--keep DIR] [--json FILE]

Draws --n small JPEGs (tests/conftest.py `draw_photo`, every one distinct), then with the `classic`
embedder:

1. ingests them into a fresh index;
2. deletes 20 % of them (a seeded random choice) and ingests again;
3. rewrites 10 % of the original number among the rest with new pictures (same names) and ingests again;
4. ingests once more with nothing changed.

After each step the index is checked from disk by tests/support/index_checks.py (read-only, independent of the
code under test): every database row marked embedded has exactly one vector and every vector one row, no
id twice, and the expected number of files; then `Engine.doctor()` must find nothing; then a sample of the
remaining photos must each find itself first (a modified photo: its new picture). It prints a Markdown
table of the steps with their timings and exits non-zero if any check fails.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow numpy on this machine, are removed from this command's
environment (never from the tests').
"""

from __future__ import annotations

import os
import sys

from _common import dropped_env, run_without_slow_numpy_env

if __name__ == "__main__":
    run_without_slow_numpy_env()

import argparse
import json
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.index_checks import assert_consistent  # noqa: E402
from support.photos import draw_photo  # noqa: E402

from retrieval.engine import Engine  # noqa: E402
from retrieval.ingest.pipeline import IngestReport  # noqa: E402

SAMPLE = 100  # photos that must find themselves after each step


@dataclass
class Step:
    name: str
    change_s: float
    ingest_s: float
    check_s: float
    files: int
    embedded: int
    removed: int
    unchanged: int
    vectors: int
    ok: bool


def draw(path: Path, seed: int, size: tuple[int, int]) -> None:
    draw_photo(seed, size=size).save(path, quality=85)


def run_step(
    name: str,
    engine: Engine,
    folder: Path,
    index_dir: Path,
    change_s: float,
    expect: dict[str, int],
    alive: dict[Path, int],
) -> Step:
    started = time.perf_counter()
    report: IngestReport = engine.ingest(folder)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    problems = []
    got = {"embedded": report.embedded, "removed": report.removed, "unchanged": report.unchanged}
    problems += [f"{key} {got[key]}, expected {want}" for key, want in expect.items() if got[key] != want]
    if report.failed:
        problems.append(f"{len(report.failed)} files failed, e.g. {report.failed[0]}")
    try:
        state = assert_consistent(index_dir, files=len(alive))
    except AssertionError as exc:
        problems.append(f"inconsistent: {exc}")
        state = None
    doctor = engine.doctor()
    problems += [f"doctor: {p}" for p in doctor.problems]
    for path in random.Random(len(alive)).sample(sorted(alive), min(SAMPLE, len(alive))):
        top = engine.search_image(path, k=1)
        if not top or top[0].path != str(path):
            problems.append(f"{path.name} does not find itself first")
            break
    check_s = time.perf_counter() - started
    for problem in problems:
        print(f"FAILED after {name}: {problem}", file=sys.stderr)
    return Step(
        name=name,
        change_s=change_s,
        ingest_s=ingest_s,
        check_s=check_s,
        files=state.files if state else -1,
        embedded=report.embedded,
        removed=report.removed,
        unchanged=report.unchanged,
        vectors=len(state.vectors) if state else -1,
        ok=not problems,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", default="64x48", help="photo size WxH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the steps here")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    began = time.perf_counter()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        folder, home = work / "photos", work / "home"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        alive = {folder / f"p{i:05d}.jpg": i for i in range(args.n)}
        for path, seed in alive.items():
            draw(path, seed, size)
        drawn_s = time.perf_counter() - started
        rng = random.Random(args.seed)
        steps = []
        with Engine("stress", home=home, model="classic") as engine:
            index_dir = engine.dir
            steps.append(run_step("ingest", engine, folder, index_dir, drawn_s, {"embedded": args.n}, alive))

            started = time.perf_counter()
            gone = rng.sample(sorted(alive), args.n // 5)
            for path in gone:
                path.unlink()
                del alive[path]
            expect = {"removed": len(gone), "embedded": 0, "unchanged": len(alive)}
            steps.append(
                run_step(
                    "delete 20 %", engine, folder, index_dir, time.perf_counter() - started, expect, alive
                )
            )

            started = time.perf_counter()
            edited = rng.sample(sorted(alive), args.n // 10)
            for path in edited:
                alive[path] += 1_000_000  # a new picture under the same name
                draw(path, alive[path], size)
            expect = {"embedded": len(edited), "removed": 0, "unchanged": len(alive) - len(edited)}
            steps.append(
                run_step(
                    "modify 10 %", engine, folder, index_dir, time.perf_counter() - started, expect, alive
                )
            )

            expect = {"embedded": 0, "removed": 0, "unchanged": len(alive)}
            steps.append(run_step("re-ingest unchanged", engine, folder, index_dir, 0.0, expect, alive))

    total_s = time.perf_counter() - began
    columns = ["step", "change (s)", "ingest (s)", "checks (s)", "files", "embedded", "removed", "unchanged"]
    print("| " + " | ".join([*columns, "vectors", "ok"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in steps:
        print(
            f"| {s.name} | {s.change_s:.1f} | {s.ingest_s:.1f} | {s.check_s:.1f} | {s.files} | "
            f"{s.embedded} | {s.removed} | {s.unchanged} | {s.vectors} | {'yes' if s.ok else '**no**'} |"
        )
    dropped = dropped_env() or "nothing"
    print()
    print(
        f"{args.n} photos of {size[0]}x{size[1]} px, `classic` embedder; total {total_s:.0f} s "
        f"(the first step's change column is drawing the photos). Load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores; Python {platform.python_version()}. "
        f"Dropped from the environment: {dropped}."
    )
    if args.json:
        args.json.write_text(json.dumps({"total_s": total_s, "steps": [asdict(s) for s in steps]}, indent=2))
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())

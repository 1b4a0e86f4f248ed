"""How long a `retrieval` command takes from the shell prompt to its answer, in fresh processes.

    python benchmarks/cli_start.py [--runs 10] [--clip clip:tiny-test|clip:ViT-B-32] [--against CHECKOUT]
                                   [--no-write]

Builds, in a scratch folder, a `classic` index and a CLIP index (random weights: the work is real, the scores
mean nothing) of 24 drawn photos, then runs each command `--runs` times as the installed `retrieval` script,
each run a new process, and reports the median wall time and CPU time (user + system of the child):

- `retrieval --help`
- `retrieval stats` (classic index)
- `retrieval list`
- `retrieval search --image PHOTO` (classic index)
- `retrieval search TEXT` (CLIP index, built beforehand: the files are in the page cache)

One more run of each under `python -X importtime` gives the cumulative import time of the packages that
matter for start-up, so a regression names its cause. `--against CHECKOUT` runs that checkout's installed
script too (its `.venv/bin/retrieval`, e.g. main's), each run right after this one's, on the same indexes:
a before/after in one run, on the same load.

The commands run as an installed program does, from cached bytecode: the children get a scratch
PYTHONPYCACHEPREFIX (and no PYTHONDONTWRITEBYTECODE, which these machines set and which would make every
run compile retrieval's own modules again, about 0.5 s of `stats`), filled by one untimed run of each.
Targets on a quiet machine: `--help` <= 0.3 s, `stats` <= 0.6 s, classic image search <= 1.0 s; the load
average is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section

# Packages whose import time is reported: what every command pays, and what only a model should cost.
PACKAGES = (
    "typer",
    "rich.console",
    "pydantic",
    "numpy",
    "sqlalchemy",
    "alembic",
    "PIL",
    "hnswlib",
    "torch",
    "torchvision",
    "open_clip",
    "sklearn",
    "scipy",
    "matplotlib",
    "skimage",
    "ray",
    "pymilvus",
)
TARGETS = {"--help": 0.3, "stats": 0.6, "classic image search": 1.0}
HEADING = "## CLI start"


def draw_photos(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((192, 144), Image.Resampling.BILINEAR)
        paths.append(folder / f"photo{i:02d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of `command` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_ms(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Cumulative import milliseconds of each of PACKAGES that `retrieval ARGS` imports (one run)."""
    command = [sys.executable, "-X", "importtime", "-m", "retrieval", *args]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if name in PACKAGES and name not in found and cumulative.isdigit():
            found[name] = int(cumulative) / 1000
    return found


def _commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True)
    return done.stdout.decode().strip() or "unknown commit"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clip", default="clip:tiny-test", help="CLIP model of the text-search index")
    parser.add_argument("--against", type=Path, help="another checkout to time beside this one (before)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    other = args.against / ".venv" / "bin" / "retrieval" if args.against else None
    if other is not None and not other.exists():
        raise SystemExit(f"no installed `retrieval` script in {other.parent}")

    exe = Path(sys.executable).parent / "retrieval"
    if not exe.exists():
        raise SystemExit(f"no installed `retrieval` script beside {sys.executable}; pip install -e . first")
    scratch = Path(tempfile.mkdtemp(prefix="cli-start-"))
    env = {**os.environ, "RETRIEVAL_HOME": str(scratch / "home"), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    try:
        photos = draw_photos(scratch / "photos", 24)
        quiet = {"env": env, "check": True, "capture_output": True}
        subprocess.run(
            [str(exe), "ingest", str(scratch / "photos"), "--model", "classic", "--no-progress"], **quiet
        )
        clip_ingest = ["ingest", str(scratch / "photos"), "--index", "clip", "--model", args.clip]
        subprocess.run([str(exe), *clip_ingest, "--pretrained", "none", "--no-progress"], **quiet)

        # label (as in TARGETS), what the table shows, the arguments
        commands = [
            ("--help", "`retrieval --help`", ["--help"]),
            ("stats", "`retrieval stats` (classic index)", ["stats"]),
            ("list", "`retrieval list` (both indexes)", ["list"]),
            (
                "classic image search",
                "`retrieval search --image PHOTO -k 5` (classic)",
                ["search", "--image", str(photos[3]), "-k", "5"],
            ),
            (
                "text search",
                f"`retrieval search TEXT -k 5` ({args.clip}, random weights)",
                ["search", "a red square", "--index", "clip", "-k", "5"],
            ),
        ]
        scripts = [exe, *([other] if other else [])]
        for _, _, words in commands:  # fills the bytecode cache of both checkouts
            for script in scripts:
                timed([str(script), *words], env)
        load_before = load()
        rows = []
        for label, shown, words in commands:
            runs = [[timed([str(script), *words], env) for script in scripts] for _ in range(args.runs)]
            medians = [
                (statistics.median(r[i][0] for r in runs), statistics.median(r[i][1] for r in runs))
                for i in range(len(scripts))
            ]
            imports = import_ms(words, env)
            rows.append((label, shown, medians, imports))
            print(f"{label}: (wall, CPU) {medians}, imports {imports}", flush=True)
        load_after = load()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    lines = [
        f"Command: `{' '.join(['python benchmarks/cli_start.py', *sys.argv[1:]])}` ({datetime.date.today()}, "
        f"{os.cpu_count()} cores, load average (1, 5, 15 min) {load_before} before and {load_after} after). "
        f"Each command run {args.runs} times as the installed `retrieval` script, each run a fresh process; "
        "median wall and CPU (user + system) seconds. A classic index and a CLIP index of 24 photos in a "
        "scratch home; import times (cumulative ms, `-X importtime`, one more run) of the packages that "
        "weigh on start-up (cumulative: open_clip includes the torch and torchvision it imports). Bytecode "
        "cached, as for an installed program (see the script's docstring)."
        + (
            f" Before: the checkout {args.against} ({_commit(args.against)}), each of its runs right after "
            f"this branch's ({_commit(Path(__file__).resolve().parent.parent)}) on the same indexes."
            if other
            else ""
        ),
        "",
    ]
    if other:
        lines += [
            "| command | wall p50 s before | wall p50 s after | CPU p50 s before | CPU p50 s after | "
            "target on a quiet machine (wall) | imports after, ms |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| command | wall p50 s | CPU p50 s | target on a quiet machine (wall) | imports, ms |",
            "|---|---|---|---|---|",
        ]
    for label, shown, medians, imports in rows:
        target = f"<= {TARGETS[label]:.1f} s" if label in TARGETS else "-"
        packages = ", ".join(
            f"{name} {ms:.0f}" for name, ms in sorted(imports.items(), key=lambda kv: -kv[1])
        )
        (wall, cpu), *before = medians
        if before:
            ((old_wall, old_cpu),) = before
            figures = f"{old_wall:.2f} | {wall:.2f} | {old_cpu:.2f} | {cpu:.2f}"
            lines.append(f"| {shown} | {figures} | {target} | {packages} |")
        else:
            lines.append(f"| {shown} | {wall:.2f} | {cpu:.2f} | {target} | {packages} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(f"{HEADING}\n\n{table}\n\n{NOTES}")


NOTES = """Why it is this fast, and what is left. No command imports a model's packages (torch, open_clip,
torchvision) until it embeds: `retrieval.embedders.base` imports torch inside the functions that run a model,
the classic embedder needs none, and `cli/main.py` imports the engine inside each command. `retrieval.engine`
imports its stages (embedders, ingest, maps, evaluation, search, decoding) in the methods that use them, so
`stats` loads no embedder and a search no map or ingest code. `stats`, `list` and a search read a database
at the current schema through stdlib sqlite3 (`retrieval/metadata/reader.py`: manifest, counts, folders,
failures, the rows of results), so they never import SQLAlchemy, the largest import they had (0.4-0.7 s
of CPU on these cores); anything else opens the SQLAlchemy store as before, and so does any database that is
not at the current schema or fails SQLite's quick check. `list` opens no vector store (no numpy). A decode
loads only the allowed formats' Pillow plugins, and pillow-heif only for an ISO media file. scikit-learn,
scipy and matplotlib load only for maps and evaluation; Ray and pymilvus only for `--ray` and Milvus
indexes. tests/test_first_run.py checks `--help`, `stats`, `list`, `doctor`, `duplicates` and a classic
image search in a fresh interpreter, SQLAlchemy's absence from `stats`, `list` and the search, numpy's
from `list`, and `stats` and `remove` on a CLIP index.
The CLI framework was the rest. typer 0.29 converts every option value through a pydantic TypeAdapter,
so each command that parsed its arguments imported pydantic (and its plugin loader, which reads every
installed package's entry points): about 0.2 s of CPU on these cores, more than the library's whole part of
`stats`. pyproject.toml keeps typer below 0.29 (0.28 parses with its vendored click, as before). The rich
consoles are made on first use and the progress bars live in `cli/progress.py`, imported by the commands that
show one, so `--help` imports no rich at all and `stats` no `rich.progress`. tests/test_first_run.py checks
that `--help` imports neither rich nor pydantic, and `stats`, `list` and the classic search no pydantic.
What a classic command still pays: typer (~80 ms) and, to print, rich's console (~50 ms); numpy and
hnswlib for a search. CPU time is the figure to read on a busy machine: wall time then includes waiting
for a core.
Before these two changes (commit 1a8941e, this section's previous run, load about 1): `--help` 0.34 s,
`stats` 0.63 s, `list` 0.63 s, classic search 0.94 s wall (1.02 s CPU). After, at load 9.4 (four other jobs
on the 2 cores; this run at nice -20), CPU time: `--help` 0.23 s, `stats` 0.35 s, `list` 0.35 s, classic
search 0.62 s.
Earlier (commit 33d0b47, which imported torch in every command; same 2 busy cores, load 5.7-8.4): `--help`
5.2-5.7 s CPU, `stats` 4.1-5.6 s CPU."""


if __name__ == "__main__":
    main()

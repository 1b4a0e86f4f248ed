"""Ingest throughput on real photos: the model alone, our ingest, and a naive pipeline, side by side.

    .venv/bin/python benchmarks/ingest.py [--sets library lossless] [--models clip:ViT-B-32 resnet50]
        [--batch 32] [--threads 2] [--workers N] [--rounds 2] [--count 200] [--json FILE]

Photo sets come from benchmarks/photos.py (Debian's mate- and gnome-backgrounds, cached outside the repo):
`library` (i) is a camera/phone mix of 12 MP JPEGs with 10 % PNG/WebP originals, `lossless` (ii) the
PNG/WebP originals alone. For each model (random weights: speed only, the vectors mean nothing), one process
measures, in rounds, with the same loaded model, batch size and torch threads:

- (a) forward: `embed_preprocessed` on ready tensors (the set's own images, preprocessed beforehand), as many
  images as the set has: the model's own speed, the ceiling for (b);
- (b) ingest: `Engine.ingest` into a fresh index, everything included (discovery, reading, hashing, decoding,
  preprocessing, embedding, SQLite rows and commit, vector store add and save, and the 96 and 256 px
  thumbnails made from the decoded pixels); (b0) the same with `thumbnails=False` (`--no-thumbnails`), in
  the same round, the two in alternating order;
- (c) naive: one file at a time in the main thread: full decode (`decode_image` without `min_side`), the
  model's transform on the full-size picture, then the model in batches; no hashing and no database, so it
  is flattered, not penalised.

Each figure is the median over rounds of images per second (wall clock). Also reported: per-format CPU time
of the decode path alone (read + hash + decode + preprocess on one thread), of making the thumbnails from
the decoded picture (T), and the bound the decode path sets on this machine when the model already uses
every core: (a) x F / (F + D), F and D in CPU ms per image.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow numpy on this machine, are removed from this command's
environment (never from the tests').
"""

from __future__ import annotations

import os
import sys

from _common import dropped_env, env_note, run_without_slow_numpy_env, write_section

if __name__ == "__main__":
    run_without_slow_numpy_env()

# First, as in the CLI: importing retrieval sets torch's OpenMP wait policy before torch loads.
import retrieval  # noqa: F401

# isort: split
import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from photos import DEFAULT_CACHE, baseline_set, describe, library_set, lossless_set, sources  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval.embedders import (  # noqa: E402
    Embedder,
    PrecisionFallbackWarning,
    RandomWeightsWarning,
    create_embedder,
)
from retrieval.engine import Engine  # noqa: E402
from retrieval.files.decoding import decode_image  # noqa: E402
from retrieval.files.discovery import content_hash  # noqa: E402
from retrieval.files.thumbnails import SIDES, thumbnails_of  # noqa: E402
from retrieval.ingest.pipeline import default_workers  # noqa: E402


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SET.json")


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """Images per second (wall clock) and this process's CPU ms per image, all threads included."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images / wall, cpu * 1000 / images


def forward(embedder: Embedder, tensors: list[Any], batch: int) -> int:
    for start in range(0, len(tensors), batch):
        embedder.embed_preprocessed(tensors[start : start + batch])
    return len(tensors)


def ingest(engine: Engine, folder: Path, workers: int | None, thumbnails: bool = True) -> int:
    report = engine.ingest(folder, workers=workers, thumbnails=thumbnails)
    if report.failed or report.linked:
        raise SystemExit(f"ingest of {folder} failed {report.failed} or linked {report.linked} files")
    return report.embedded


def naive(embedder: Embedder, files: list[Path], batch: int) -> int:
    pending: list[Any] = []
    for path in files:
        pending.append(embedder.preprocess(decode_image(path).image))
        if len(pending) == batch:
            embedder.embed_preprocessed(pending)
            pending.clear()
    if pending:
        embedder.embed_preprocessed(pending)
    return len(files)


def kind_of(path: Path, decoded_format: str) -> str:
    with Image.open(path) as im:
        return decoded_format + (" progressive" if im.info.get("progressive") else "")


def decode_costs(embedder: Embedder, files: list[Path], fidelity: bool) -> dict[str, dict[str, float]]:
    """Per format: CPU ms per image of our decode path on this thread (what each decode worker pays), and
    with `fidelity` the CPU ms of a full decode + full-size preprocess, and how far our preprocessed tensor
    and embedding are from that full-decode path (grey levels of 255; cosine, random weights)."""
    rows: dict[str, list[dict[str, float]]] = {}
    scale = getattr(
        getattr(embedder, "_preprocess", None) or getattr(embedder, "_pillow", None), "_scale", None
    )
    for path in files:
        started = time.thread_time()
        data = path.read_bytes()
        content_hash(data)
        decoded = decode_image(data, min_side=embedder.input_size)
        fast = embedder.preprocess(decoded.image)
        row = {"cpu_ms": (time.thread_time() - started) * 1000}
        started = time.thread_time()
        thumbs = thumbnails_of(decoded.image, SIDES, (decoded.width, decoded.height))
        row["thumb_cpu_ms"] = (time.thread_time() - started) * 1000
        row["thumb_sides_left"] = len(SIDES) - len(thumbs)  # made on request instead (decoded too small)
        if fidelity:
            started = time.thread_time()
            full = embedder.preprocess(decode_image(path.read_bytes()).image)
            row["full_cpu_ms"] = (time.thread_time() - started) * 1000
            diff = (fast - full).abs().numpy()
            if scale is not None:
                diff = diff / scale[:, None, None]  # back to grey levels
            vectors = embedder.embed_preprocessed([fast, full])
            row |= {"mean_levels": float(diff.mean()), "max_levels": float(diff.max())}
            row["cosine"] = float(vectors[0] @ vectors[1])
        rows.setdefault(kind_of(path, decoded.format), []).append(row)
    rows["all"] = [row for kind_rows in list(rows.values()) for row in kind_rows]
    out = {}
    for kind, kind_rows in sorted(rows.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        summary = {
            "files": len(kind_rows),
            "cpu_ms": statistics.mean(r["cpu_ms"] for r in kind_rows),
            "thumb_cpu_ms": statistics.mean(r["thumb_cpu_ms"] for r in kind_rows),
            "thumb_sides_left": sum(r["thumb_sides_left"] for r in kind_rows),
        }
        if fidelity:
            summary |= {
                "full_cpu_ms": statistics.mean(r["full_cpu_ms"] for r in kind_rows),
                "mean_levels": statistics.mean(r["mean_levels"] for r in kind_rows),
                "worst_mean_levels": max(r["mean_levels"] for r in kind_rows),
                "max_levels": max(r["max_levels"] for r in kind_rows),
                "min_cosine": min(r["cosine"] for r in kind_rows),
            }
        out[kind] = summary
    return out


def loadavg() -> float:
    return os.getloadavg()[0]


def open_engine(name: str, model: str, precision: str, work: Path, args: argparse.Namespace) -> Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        warnings.simplefilter("ignore", PrecisionFallbackWarning)
        return Engine(
            name,
            home=work,
            model=model,
            pretrained=None,
            device="cpu",
            batch_size=args.batch,
            precision=precision,
        )


def neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Each row's k nearest other rows by cosine (the rows are unit vectors)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def agreement(ref: np.ndarray, other: np.ndarray, queries: np.ndarray | None = None) -> dict[str, float]:
    """How far `other` is from `ref` (same rows): the lowest cosine of a row to its reference, and recall@10
    of `other`'s neighbours against `ref`'s (images among themselves, or `queries` = (ref, other) text
    vectors against the images)."""
    if queries is None:
        want, got = neighbours(ref), neighbours(other)
        cosines = (ref * other).sum(axis=1)
    else:
        ref_q, other_q = queries
        want = np.argsort(-(ref_q @ ref.T), axis=1, kind="stable")[:, :10]
        got = np.argsort(-(other_q @ other.T), axis=1, kind="stable")[:, :10]
        cosines = (ref_q * other_q).sum(axis=1)
    recall = float(np.mean([len(set(w) & set(g)) / len(w) for w, g in zip(want, got, strict=True)]))
    return {"min_cosine": float(cosines.min()), "recall10": recall}


def embed_all(embedder: Embedder, tensors: list[Any], batch: int) -> np.ndarray:
    return np.concatenate(
        [embedder.embed_preprocessed(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    )


def text_queries(count: int = 200) -> list[str]:
    """Photo-search-like queries built from a fixed vocabulary (the text tower's fidelity set)."""
    things = [
        *("a dog", "two cats", "a red car", "mountains", "a beach", "a city street", "flowers"),
        *("a forest", "a bridge", "a lake", "snow", "a child", "an old house", "the sea", "clouds"),
        *("a bicycle", "a birthday cake", "a train station", "autumn leaves", "a desert road"),
    ]
    moods = [
        *("at sunset", "at night", "in the rain", "in winter", "from above", "close up"),
        *("in black and white", "on a sunny day", "with friends", "in the fog"),
    ]
    queries = [f"{t} {m}" for t in things for m in moods]
    return (queries + [f"a photo of {q}" for q in queries])[:count]


def fidelity(model: str, embedders: dict[str, Embedder], args: argparse.Namespace) -> dict[str, Any]:
    """Every precision against fp32 on the raster originals under /usr/share/backgrounds (images among
    themselves) and, for CLIP, text queries against those images."""
    files = [p for kind in sources().values() for p in kind]
    ref = embedders["fp32"]
    tensors = [ref.preprocess(decode_image(p, min_side=ref.input_size).image) for p in files]
    vectors = {p: embed_all(e, tensors, args.batch) for p, e in embedders.items()}
    texts = text_queries() if ref.supports_text else []
    text_vectors = {p: e.embed_texts(texts) for p, e in embedders.items()} if texts else {}
    out: dict[str, Any] = {"images": len(files), "texts": len(texts), "by_precision": {}}
    for precision in embedders:
        if precision == "fp32":
            continue
        row = {"images": agreement(vectors["fp32"], vectors[precision])}
        if texts:
            row["texts"] = agreement(
                vectors["fp32"], vectors[precision], (text_vectors["fp32"], text_vectors[precision])
            )
        out["by_precision"][precision] = row
    if model.startswith("resnet") and "int8" in embedders and args.static_int8:
        out["static_int8"] = static_int8_candidate(ref, tensors, vectors["fp32"], args)
    return out


def static_int8_candidate(
    ref: Embedder, tensors: list[Any], fp32: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """What a ResNet's static int8 (FX graph mode, x86 qconfig, calibrated on 32 of these images) would give:
    forward speed against fp32 on the same tensors, build time and fidelity. Measured, not shipped."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = ref._live_model()  # type: ignore[attr-defined]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(
            copy.deepcopy(model), get_default_qconfig_mapping("x86"), (torch.stack(tensors[:8]),)
        )
        with torch.inference_mode():
            for i in range(0, 32, 8):
                prepared(torch.stack(tensors[i : i + 8]))
        static = convert_fx(prepared)
    build = time.perf_counter() - started
    candidate = copy.copy(ref)
    candidate._model = static  # type: ignore[attr-defined]
    rates: dict[str, list[float]] = {"fp32": [], "static": []}
    for _ in range(args.rounds):
        for key, emb in (("fp32", ref), ("static", candidate)):
            rates[key].append(timed(partial(forward, emb, tensors, args.batch))[0])
    vectors = embed_all(candidate, tensors, args.batch)
    return {
        "build_s": build,
        "forward": {k: statistics.median(v) for k, v in rates.items()},
        **agreement(fp32, vectors),
    }


def bench_model(model: str, sets: dict[str, Path], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every precision of `model` in the same rounds (their order alternating), so that a load drifting
    during the run favours none; the first precision (fp32) also gets the naive loop and the decode costs."""
    precisions = args.precision
    engines = {
        p: open_engine(f"bench-{model.replace(':', '-')}-{p}", model, p, work, args) for p in precisions
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        warnings.simplefilter("ignore", PrecisionFallbackWarning)
        embedders = {p: e.embedder for p, e in engines.items()}
    workers = args.workers or default_workers()
    ref = embedders["fp32"]
    out: dict[str, Any] = {
        "model": model,
        "embedder": ref.id,
        "workers": workers,
        "sets": {},
        "embedders": {p: e.id for p, e in embedders.items()},
        "quantize_s": {p: e.quantize_seconds for p, e in embedders.items()},
    }
    for set_name, folder in sets.items():
        files = files_of(folder)
        tensors = [ref.preprocess(decode_image(p, min_side=ref.input_size).image) for p in files]
        for embedder in embedders.values():
            embedder.embed_preprocessed(tensors[: args.batch])  # warm-up
        rounds: dict[str, dict[str, list[tuple[float, float]]]] = {
            p: {"a": [], "b": [], "b0": [], "c": []} for p in precisions
        }
        loads: list[float] = []
        for r in range(args.rounds):
            for precision in precisions if r % 2 == 0 else precisions[::-1]:
                embedder, got = embedders[precision], rounds[precision]
                loads.append(loadavg())
                got["a"].append(timed(partial(forward, embedder, tensors, args.batch)))
                loads.append(loadavg())
                # With and without thumbnails, in turn first: a drifting load favours neither.
                keys = ("b",) if args.skip_b0 else ("b", "b0") if r % 2 == 0 else ("b0", "b")
                for key in keys:
                    fresh = open_engine(
                        f"bench-{model.replace(':', '-')}-{set_name}-{precision}-{r}-{key}",
                        model,
                        precision,
                        work,
                        args,
                    )
                    fresh._embedder = (
                        embedder  # the same warm model; Engine checks its id against the manifest
                    )
                    got[key].append(timed(partial(ingest, fresh, folder, args.workers, key == "b")))
                    fresh._embedder = None
                    fresh.close()
                    loads.append(loadavg())
                if not args.skip_naive and precision == "fp32":
                    got["c"].append(timed(partial(naive, embedder, files, args.batch)))
                    loads.append(loadavg())
                print(
                    f"  {model} {precision} {set_name} round {r}: "
                    + ", ".join(
                        f"{k} {v[-1][0]:.2f} img/s {v[-1][1]:.0f} CPU ms/img" for k, v in got.items() if v
                    )
                    + f" (load {loads[-1]:.2f})",
                    file=sys.stderr,
                )
        costs = decode_costs(ref, files, args.fidelity)
        vectors = {p: embed_all(e, tensors, args.batch) for p, e in embedders.items()}
        by_precision: dict[str, dict[str, Any]] = {}
        for precision in precisions:
            got = rounds[precision]
            med = {k: statistics.median(rate for rate, _ in v) for k, v in got.items() if v}
            cpu = {k: statistics.median(ms for _, ms in v) for k, v in got.items() if v}
            # If the model keeps every core busy, each image costs its forward CPU plus its decode CPU.
            bound = med["a"] * cpu["a"] / (cpu["a"] + costs["all"]["cpu_ms"])
            by_precision[precision] = {
                "rounds": got,
                "median": med,
                "cpu_ms": cpu,
                "b/a": med["b"] / med["a"],
                "cpu_bound_b": bound,
                **(agreement(vectors["fp32"], vectors[precision]) if precision != "fp32" else {}),
            }
            if "b0" in med:
                by_precision[precision]["b/b0"] = med["b"] / med["b0"]
        fp32 = by_precision["fp32"]
        for row in by_precision.values():
            row["a/a_fp32"] = row["median"]["a"] / fp32["median"]["a"]
            row["b/b_fp32"] = row["median"]["b"] / fp32["median"]["b"]
            row["b/a_fp32"] = row["median"]["b"] / fp32["median"]["a"]
        out["sets"][set_name] = {
            "files": len(files),
            **fp32,
            "b/c": fp32["median"]["b"] / fp32["median"]["c"] if "c" in fp32["median"] else None,
            "load": {"min": min(loads), "max": max(loads)},
            "decode_cpu_ms": costs,
            "by_precision": by_precision,
        }
    if len(precisions) > 1:
        out["fidelity"] = fidelity(model, embedders, args)
    for engine in engines.values():
        engine.close()
    return out


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"torch threads {meta['threads']}, batch {meta['batch']}, decode workers {meta['workers']}, "
        f"rounds {meta['rounds']} (median), load average {meta['load_start']:.2f} at start, "
        f"{meta['load_end']:.2f} at end; {meta['cpus']} CPUs, {meta['cpu']}; OMP_WAIT_POLICY "
        f"{meta['omp_wait_policy']}; OPENBLAS env dropped: {meta['dropped_env'] or 'none set'}",
        "",
        "| model | set | (a) forward img/s | (b) ingest img/s | (b0) no thumbnails img/s | (c) naive img/s "
        "| (b)/(a) | (b)/(b0) | (b)/(c) | CPU ms/img (a) / (b) / (b0) / (c) | decode path CPU ms/img "
        "| thumbnails CPU ms/img | (b) bound by CPU | load min–max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for set_name, s in res["sets"].items():
            m, cpu = s["median"], s["cpu_ms"]
            bc = f"{s['b/c']:.2f}" if s["b/c"] is not None else "–"
            c = f"{m['c']:.2f}" if "c" in m else "–"
            cpus = " / ".join(f"{cpu[k]:.0f}" if k in cpu else "–" for k in ("a", "b", "b0", "c"))
            costs = s["decode_cpu_ms"]["all"]
            b0 = f"{m['b0']:.2f}" if "b0" in m else "–"  # runs saved before thumbnails were made at ingest
            bb0 = f"{s['b/b0']:.2f}" if "b/b0" in s else "–"
            thumb = f"{costs['thumb_cpu_ms']:.1f}" if "thumb_cpu_ms" in costs else "–"
            lines.append(
                f"| {res['model']} | {set_name} ({s['files']}) | {m['a']:.2f} | {m['b']:.2f} "
                f"| {b0} | {c} | {s['b/a']:.2f} | {bb0} | {bc} | {cpus} "
                f"| {costs['cpu_ms']:.1f} | {thumb} "
                f"| {s['cpu_bound_b']:.2f} | {s['load']['min']:.2f}–{s['load']['max']:.2f} |"
            )
    lines += [
        "",
        "Per image, by format: CPU ms of our decode path (read + hash + decode + preprocess, one thread);"
        " with --fidelity also CPU ms of a full decode + full-size preprocess, and our preprocessed tensor"
        " against that one in grey levels of 255 (mean over files, worst file's mean, worst pixel) and the"
        " embeddings' lowest cosine (random weights).",
        "",
        "| model | set | format | files | our CPU ms | full-decode CPU ms | mean Δ | worst file "
        "| worst pixel | min cosine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for set_name, s in res["sets"].items():
            for kind, c in s["decode_cpu_ms"].items():
                extra = (
                    f"{c['full_cpu_ms']:.1f} | {c['mean_levels']:.2f} | {c['worst_mean_levels']:.2f} "
                    f"| {c['max_levels']:.0f} | {c['min_cosine']:.5f}"
                    if "full_cpu_ms" in c
                    else "– | – | – | – | –"
                )
                lines.append(
                    f"| {res['model']} | {set_name} | {kind} | {c['files']} | {c['cpu_ms']:.1f} | {extra} |"
                )
    return "\n".join(lines)


def precision_tables(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Each precision beside fp32, from the same rounds: speed, the quantised build, and fidelity."""
    if len(meta.get("precisions", ["fp32"])) < 2:
        return ""
    lines = [
        "Precisions side by side (same process, same rounds, their order alternating). Fidelity against fp32 "
        "on the same preprocessed tensors: the lowest cosine of an image's vector to its fp32 one, and "
        "recall@10 of each image's 10 nearest others against fp32's 10.",
        "",
        "| model | precision | embedder id | set | (a) forward img/s | (b) ingest img/s | (a)/(a fp32) "
        "| (b)/(b fp32) | (b)/(a fp32) | CPU ms/img (a) / (b) | quantised build s | min cosine | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for set_name, s in res["sets"].items():
            for precision, row in s["by_precision"].items():
                m, cpu = row["median"], row["cpu_ms"]
                build = res["quantize_s"].get(precision)
                cells = [
                    res["model"],
                    precision,
                    f"`{res['embedders'][precision]}`",
                    f"{set_name} ({s['files']})",
                    f"{m['a']:.2f}",
                    f"{m['b']:.2f}",
                    f"{row['a/a_fp32']:.2f}",
                    f"{row['b/b_fp32']:.2f}",
                    f"{row['b/a_fp32']:.2f}",
                    f"{cpu['a']:.0f} / {cpu['b']:.0f}",
                    "–" if build is None else f"{build:.1f}",
                    f"{row.get('min_cosine', 1.0):.5f}",
                    f"{row.get('recall10', 1.0):.4f}",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Fidelity on the raster originals under /usr/share/backgrounds (real JPEG, PNG and WebP photos and "
        "artwork, each at its own size): images against each other as above; text queries (photo-search "
        "phrases) against those images, int8 text and images against fp32 text and images: the lowest "
        "cosine of a text vector to its fp32 one, recall@10 of the images each query finds.",
        "",
        "| model | precision | images | image min cosine | image recall@10 | texts | text min cosine "
        "| text→image recall@10 | meets ≥ 0.99 recall@10 and ≥ 0.999 cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        fid = res.get("fidelity")
        if not fid:
            continue
        for precision, row in fid["by_precision"].items():
            img, txt = row["images"], row.get("texts")
            ok = img["recall10"] >= 0.99 and img["min_cosine"] >= 0.999
            if txt:
                ok = ok and txt["recall10"] >= 0.99 and txt["min_cosine"] >= 0.999
            text_cells = (
                f"{fid['texts']} | {txt['min_cosine']:.5f} | {txt['recall10']:.4f}" if txt else "– | – | –"
            )
            lines.append(
                f"| {res['model']} | {precision} | {fid['images']} | {img['min_cosine']:.5f} "
                f"| {img['recall10']:.4f} | {text_cells} | {'yes' if ok else 'no'} |"
            )
        static = fid.get("static_int8")
        if static:
            speed = static["forward"]["static"] / static["forward"]["fp32"]
            lines.append(
                f"| {res['model']} | int8 static (FX, not kept) | {fid['images']} "
                f"| {static['min_cosine']:.5f} | {static['recall10']:.4f} | – | – | – "
                f"| no (forward {speed:.2f}× fp32, build {static['build_s']:.1f} s) |"
            )
    return "\n".join(lines)


HEADING = "## Ingest throughput"
SWEEP_HEADING = "## Ingest: forward throughput by batch size"
TARGETS = {"b/a": 0.9, "b/c": 3.0}  # on the library set (i), for every model


def command() -> str:
    return "python benchmarks/ingest.py " + " ".join(sys.argv[1:])


def section(tables: str, results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The "Ingest throughput" section: how it was run, the tables, and each target read off this run."""
    sets = "; ".join(
        f"{name}: "
        + ", ".join(
            f"{k['files']} {kind} (avg {k['megapixels']} MP, {k['megabytes']} MB)"
            for kind, k in d["kinds"].items()
        )
        for name, d in meta["sets"].items()
    )
    verdicts = []
    for res in results:
        for set_name, s in res["sets"].items():
            parts = [f"(b)/(a) {s['b/a']:.2f}", f"(b)/(c) {s['b/c']:.2f}" if s["b/c"] is not None else ""]
            if set_name == "library":
                parts = [
                    f"(b)/(a) {s['b/a']:.2f} (target ≥ {TARGETS['b/a']}: "
                    f"{'met' if s['b/a'] >= TARGETS['b/a'] else 'missed'})",
                    f"(b)/(c) {s['b/c']:.2f} (target ≥ {TARGETS['b/c']}: "
                    f"{'met' if s['b/c'] >= TARGETS['b/c'] else 'missed'})"
                    if s["b/c"] is not None
                    else "",
                ]
            if "b/b0" in s:
                costs = s["decode_cpu_ms"]["all"]
                parts.append(
                    f"thumbnails at ingest: (b)/(b0) {s['b/b0']:.2f}, T = {costs['thumb_cpu_ms']:.1f} CPU ms "
                    f"per image ({costs['thumb_sides_left']} sides left to be made on request)"
                )
            parts.append(
                f"(b) is {s['median']['b'] / s['cpu_bound_b']:.2f}× the CPU bound (a)·F/(F+D) = "
                f"{s['cpu_bound_b']:.2f} img/s, with F = {s['cpu_ms']['a']:.0f} CPU ms of forward and "
                f"D = {s['decode_cpu_ms']['all']['cpu_ms']:.0f} CPU ms of decode per image"
            )
            verdicts.append(f"- {res['model']}, {set_name}: " + "; ".join(p for p in parts if p) + ".")
    for res in results:
        lib = res["sets"].get("library")
        if lib is None or len(lib.get("by_precision", {})) < 2:
            continue
        for precision, row in lib["by_precision"].items():
            if precision == "fp32":
                continue
            verdicts.append(
                f"- {res['model']}, {precision}: forward {row['a/a_fp32']:.2f}× fp32's, ingest "
                f"{row['b/b_fp32']:.2f}× fp32's; ingest at {precision} is {row['b/a_fp32']:.2f}× the fp32 "
                f"forward (a) (target ≥ 0.9 for the CPU default: "
                f"{'met' if row['b/a_fp32'] >= 0.9 else 'missed'})."
            )
    return (
        f"{HEADING}\n\n"
        f"Command: `{meta['command']}` ({meta['date']}, {meta['cpus']} cores, {meta['cpu']}, torch "
        f"{meta['torch']}; {env_note()}). Random weights: these figures are speed only. Sets, built by "
        f"`benchmarks/photos.py` from Debian's mate- and gnome-backgrounds: {sets}. In one process, with one "
        f"loaded model, batch {meta['batch']} and {meta['threads']} torch threads, each round times (a) the "
        f"model's forward on ready tensors, (b) `Engine.ingest` of the folder into a fresh index (discovery, "
        f"hashing, decode, embed, SQLite, vector store save) and (c) a naive loop (full decode and "
        f"preprocess one file at a time in the main thread, then the model); medians over rounds.\n\n"
        f"{tables}\n\n"
        f"Against the targets, from this run:\n\n" + "\n".join(verdicts) + "\n\n" + READING
    )


READING = """How to read it. On a CPU the model and the decoders share the same cores, so no pipeline can beat
(a)·F/(F+D): every image costs its forward CPU F plus its decode CPU D, and (a) already keeps the cores
busy with F alone. The "(b) bound by CPU" column is that ceiling, and the overlap is doing its job when (b)
reaches it. So (b)/(a) can approach 1 only when D is small next to F: ≥ 0.9 × (a) needs D ≤ F/9, about
16 ms per image here, while libjpeg's entropy decode of a 12 MP JPEG alone costs ~20 ms at 1/8 scale. The
(b) ≥ 3 × (c) target is the same wall: 3 × (c) is above 0.9 × (a) for ViT-B-32 and above (a) itself for
ResNet-50 (whose forward is cheap next to the naive full decode). Both ingest targets are therefore out of
reach on this two-core CPU machine, by arithmetic rather than by pipeline design; on a GPU the forward
leaves the CPU free, and the same code is bound by max(forward, decode / workers) instead.

- ViT-B-32 reaches its CPU bound. ResNet-50 stays ~10 % under it: its forward runs in slices of 8 whose
  activations live in the caches (the batch sweep section), and decoders running beside it on the other
  core evict them, so F itself grows during an ingest.
- JPEG: `draft` makes libjpeg decode straight to 1/8 scale, then a box `reduce` to ≥ 4 × the model input
  and the model's own resize: the whole path (read, hash, decode, preprocess) is ~30 ms of CPU for a 12 MP
  baseline JPEG against ~100-145 ms for a full decode and preprocess. The fidelity columns compare the
  two tensors: under half a grey level on average, and embeddings within cosine 0.9997 (random weights).
- Progressive JPEG still pays its full entropy decode (every scan refines the whole image), so it costs ~4×
  a baseline one even with `draft`.
- PNG and WebP have no shrink-on-load in Pillow and are decoded whole. The lossless set (ii) is therefore
  decoder-bound: large WebPs cost 350-400 ms each, and (b) there is bounded by D, not by the model. libvips's
  scaled WebP load (pyvips) was measured as an alternative (section "Decoders" below).
- ResNet-50 on a CPU runs its batch in forward slices of 8 (see the batch sweep); (a) is measured the
  same way, so the ratio is like for like.
- Thumbnails: (b) makes the 96 and 256 px thumbnails from the pixels it decoded for the model, (b0) makes
  none; their cost is T per image on the decode threads, with no second decode.
"""


def batch_sweep(models: list[str], sizes: list[int], threads: int, images: int = 128) -> str:
    """Forward throughput on ready tensors per batch size, each batch in one forward pass (each size timed
    twice, best kept)."""
    lines = [
        f"torch threads {threads}, {images} images per timing, best of 2, load {loadavg():.2f}",
        "",
        "| model | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for model in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            embedder = create_embedder(model, pretrained=None, device="cpu")
        if hasattr(embedder, "forward_batch"):
            embedder.forward_batch = None  # whole batches: what this sweep measures
        size = embedder.input_size if model.startswith("clip") else 224
        tensors = [torch.randn(3, size, size) for _ in range(images)]
        embedder.embed_preprocessed(tensors[:8])
        rates = [max(timed(partial(forward, embedder, tensors, b))[0] for _ in range(2)) for b in sizes]
        lines.append(f"| {model} | " + " | ".join(f"{r:.2f}" for r in rates) + " |")
        embedder.close()
    lines[0] += f"–{loadavg():.2f}"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["library", "lossless", "baseline"],
        choices=["library", "lossless", "baseline"],
    )
    parser.add_argument("--models", nargs="+", default=["clip:ViT-B-32", "resnet50"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: ingest's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=200, help="files in the library set")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-b0", action="store_true", help="no (b0) ingest without thumbnails")
    parser.add_argument(
        "--precision",
        type=lambda text: [p.strip() for p in text.split(",") if p.strip()],
        default=["fp32"],
        help="comma-separated precisions measured side by side, e.g. fp32,int8 (fp32 is always included)",
    )
    parser.add_argument(
        "--no-static-int8", dest="static_int8", action="store_false",
        help="skip measuring a ResNet's static int8 (FX) candidate",
    )  # fmt: skip
    parser.add_argument("--fidelity", action="store_true", help="compare our decode path with a full decode")
    parser.add_argument("--batch-sweep", type=int, nargs="+", help="only (a), at these batch sizes")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--from-json", type=Path, help="rewrite the section from a run saved with --json")
    args = parser.parse_args()

    if args.from_json:
        recorded = json.loads(args.from_json.read_text())
        tables = markdown(recorded["results"], recorded["meta"])
        extra = precision_tables(recorded["results"], recorded["meta"])
        tables = tables + ("\n\n" + extra if extra else "")
        print(tables)
        write_section(section(tables, recorded["results"], recorded["meta"]))
        return
    args.precision = ["fp32", *(p for p in dict.fromkeys(args.precision) if p != "fp32")]
    torch.set_num_threads(args.threads)
    if args.batch_sweep:
        table = batch_sweep(args.models, args.batch_sweep, args.threads)
        print(table)
        if not args.no_write:
            write_section(
                f"{SWEEP_HEADING}\n\nCommand: `{command()}` ({datetime.date.today()}). Images per second of "
                f"the forward alone, each batch in one pass. An embedder whose throughput peaks below the "
                f"ingest batch runs the batch in slices of its `forward_batch` (ResNet on a CPU: 8)."
                f"\n\n{table}\n"
            )
        return
    sets = {}
    makers = {"library": library_set, "baseline": baseline_set}
    for name in args.sets:
        sets[name] = makers[name](args.count, args.cache) if name in makers else lossless_set(args.cache)
    meta: dict[str, Any] = {
        "threads": args.threads,
        "precisions": args.precision,
        "batch": args.batch,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "dropped_env": dropped_env(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default)"),
        "command": command(),
        "date": str(datetime.date.today()),
        "load_start": loadavg(),
        "sets": {name: describe(folder) for name, folder in sets.items()},
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="retrieval-ingest-bench-") as tmp:
        for model in args.models:
            results.append(bench_model(model, sets, args, Path(tmp)))
    meta["load_end"] = loadavg()
    meta["workers"] = ", ".join(f"{r['model']} {r['workers']}" for r in results)
    tables = markdown(results, meta)
    extra = precision_tables(results, meta)
    tables = tables + ("\n\n" + extra if extra else "")
    print(tables)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    if not args.no_write:
        write_section(section(tables, results, meta))


if __name__ == "__main__":
    main()

"""Quality figures for BENCHMARKS.md ("Quality"): the digits table and near-duplicate precision/recall.

    .venv/bin/python benchmarks/quality.py [--model classic] [--seeds 0 1 2] [--photos 200] [--json FILE]

Digits: scikit-learn's 1797 8x8 digits (shipped offline), upscaled to 32x32 PNG files in one folder per class
and embedded through the same decoding as ingest. For each seed every class is split in half: PCA, LDA and the
triplet head are fitted on one half, and leave-one-out retrieval is measured on the other half only.

Duplicates: photos (non-overlapping tiles of scikit-image's sample photographs, plus drawn scenes), each
with altered copies, and as many unrelated photos, are ingested into a fresh index; `Engine.duplicates()`
runs at the model's default threshold and over a sweep. Two collections: "standard" copies (half size, JPEG
quality 30, 90 % crop, 10 % brighter: the acceptance set of tests/test_duplicates.py) and "hard" copies
(20 % brighter, 80 % crop). Pair precision/recall count pairs of files; a group is found when its files are
exactly one reported group; a false group mixes photos that are not copies of one another.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance
from sklearn.datasets import load_digits

from retrieval.embedders import create_embedder
from retrieval.engine import Engine
from retrieval.quality.evaluation import embed_labelled, evaluate, load_labelled_folder

METHODS = ("raw", "pca", "lda", "head")
TILE = (192, 144)
SWEEP = (0.70, 0.75, 0.78, 0.80, 0.82, 0.85, 0.88, 0.90, 0.93, 0.95)


# -- digits ------------------------------------------------------------------------------------------


def write_digits(folder: Path, side: int = 32) -> None:
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        image.save(folder / str(label) / f"{i:04d}.png")


def digits_table(model: str, seeds: list[int], work: Path) -> dict[str, Any]:
    folder = work / "digits"
    write_digits(folder)
    with create_embedder(model, device="cpu") as embedder:
        started = time.monotonic()
        embedded = embed_labelled(load_labelled_folder(folder), embedder)
        embed_seconds = time.monotonic() - started
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    for seed in seeds:
        report = evaluate(embedded, ks=(1, 10), test_fraction=0.5, seed=seed, methods=METHODS)
        for m in report.methods:
            figures = {
                "precision@1": m.retrieval.precision[1],
                "precision@10": m.retrieval.precision[10],
                "mAP@10": m.retrieval.map[10],
                "recall@10": m.retrieval.recall[10],
                "centroid accuracy": m.centroid.accuracy,
                "dim": m.dim,
                "fit seconds": m.fit_seconds,
            }
            for key, value in figures.items():
                rows[m.name].setdefault(key, []).append(value)
    return {
        "images": len(embedded.vectors),
        "embedder": embedded.embedder_id,
        "embed_seconds": embed_seconds,
        "seeds": seeds,
        "measured_on": report.n_measured,
        "rows": rows,
    }


# -- duplicates --------------------------------------------------------------------------------------


def _sample_photos() -> list[np.ndarray]:
    import skimage.data as data

    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "retina",
        "hubble_deep_field",
    ]
    names += ["camera", "grass", "gravel", "brick", "moon", "coins", "clock"]
    out = []
    for name in names:
        image = getattr(data, name)()
        out.append(np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3])
    return out


def real_tiles(limit_per_photo: int = 8) -> list[Image.Image]:
    """Non-overlapping TILE-sized pieces of the sample photographs (each source gives at most a few)."""
    tiles = []
    w, h = TILE
    for photo in _sample_photos():
        image = Image.fromarray(photo)
        if min(image.size) > 2 * h:
            image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
        got = 0
        for top in range(0, image.height - h + 1, h):
            for left in range(0, image.width - w + 1, w):
                if got < limit_per_photo:
                    tiles.append(image.crop((left, top, left + w, top + h)))
                    got += 1
    return tiles


def drawn_scene(seed: int) -> Image.Image:
    """A gradient sky, a ground band, a sun and a few objects, with sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = TILE
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    pixels = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    pixels += rng.normal(0, rng.uniform(2, 12), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    horizon = int(rng.uniform(0.4, 0.8) * h)
    pen.rectangle((0, horizon, w, h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    for _ in range(int(rng.integers(2, 6))):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(6, 40))
        box = (x - r, y - r, x + r, y + r)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=fill)
    return image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


TRANSFORMS: dict[str, dict[str, Callable[[Image.Image], Image.Image]]] = {
    "standard": {
        "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
        "jpeg30": lambda im: _jpeg(im, 30),
        "crop90": lambda im: _crop(im, 0.9),
        "bright110": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    },
    "hard": {
        "bright120": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
        "crop80": lambda im: _crop(im, 0.8),
    },
}


def make_collection(folder: Path, transforms: dict[str, Callable], photos: list[Image.Image], singles: int):
    """Originals (the first half of `photos`) with their copies, and `singles` unrelated photos."""
    folder.mkdir(parents=True)
    truth: dict[str, int] = {}
    kind_of: dict[str, str] = {}
    originals = photos[: len(photos) - singles]
    for i, photo in enumerate(originals):
        path = folder / f"p{i:04d}.png"
        photo.save(path)
        truth[str(path)] = i
        for name, transform in transforms.items():
            copy = folder / f"p{i:04d}-{name}.png"
            transform(photo).save(copy)
            truth[str(copy)] = i
            kind_of[str(copy)] = name
    for j, photo in enumerate(photos[len(originals) :]):
        path = folder / f"s{j:04d}.png"
        photo.save(path)
        truth[str(path)] = -1 - j
    return truth, kind_of, len(originals)


def score_groups(groups: list[set[str]], truth: dict[str, int], kind_of: dict[str, str]) -> dict[str, Any]:
    predicted = {p: n for n, g in enumerate(groups) for p in g}
    true_pairs = {
        frozenset(pair)
        for members in _members(truth).values()
        if len(members) > 1
        for pair in combinations(sorted(members), 2)
    }
    found_pairs = {frozenset(pair) for g in groups for pair in combinations(sorted(g), 2)}
    hits = len(true_pairs & found_pairs)
    true_groups = [set(m) for m in _members(truth).values() if len(m) > 1]
    exact = sum(g in groups for g in true_groups)
    false = sum(1 for g in groups if len({truth[p] for p in g}) > 1)
    by_kind: dict[str, list[bool]] = {}
    originals = {v: k for k, v in truth.items() if k not in kind_of and v >= 0}
    for path, kind in kind_of.items():
        original = originals[truth[path]]
        together = path in predicted and predicted.get(original) == predicted[path]
        by_kind.setdefault(kind, []).append(together)
    return {
        "pair_precision": hits / len(found_pairs) if found_pairs else 1.0,
        "pair_recall": hits / len(true_pairs),
        "group_recall": exact / len(true_groups),
        "false_groups": false,
        "groups": len(groups),
        "copy_recall": {k: float(np.mean(v)) for k, v in by_kind.items()},
    }


def _members(truth: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for path, group in truth.items():
        out.setdefault(group, []).append(path)
    return out


def duplicates_figures(model: str, n_photos: int, work: Path) -> dict[str, Any]:
    tiles = real_tiles()
    photos = tiles + [drawn_scene(seed) for seed in range(max(0, n_photos - len(tiles)))]
    rng = np.random.default_rng(0)
    photos = [photos[i] for i in rng.permutation(len(photos))]
    results: dict[str, Any] = {"photos": len(photos), "real_tiles": len(tiles)}
    for name, transforms in TRANSFORMS.items():
        truth, kind_of, n_originals = make_collection(work / name, transforms, photos, len(photos) // 2)
        with Engine(name, home=work / "home", model=model, device="cpu") as engine:
            started = time.monotonic()
            engine.ingest(work / name, progress=None)
            ingest_seconds = time.monotonic() - started
            started = time.monotonic()
            report = engine.duplicates()
            seconds = time.monotonic() - started
            at_default = score_groups(_path_sets(report), truth, kind_of)
            sweep = {
                t: score_groups(_path_sets(engine.duplicates(threshold=t)), truth, kind_of) for t in SWEEP
            }
        results[name] = {
            "files": len(truth),
            "originals": n_originals,
            "threshold": report.threshold,
            "ingest_seconds": ingest_seconds,
            "duplicates_seconds": seconds,
            "default": at_default,
            "sweep": sweep,
        }
    return results


def _path_sets(report: Any) -> list[set[str]]:
    return [{p for m in g.members for p in m.paths} for g in report.groups]


# -- output ------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def print_markdown(digits: dict[str, Any] | None, dups: dict[str, Any] | None) -> None:
    if digits:
        print(
            f"Digits: {digits['images']} images, {digits['embedder']}, embedded in "
            f"{digits['embed_seconds']:.1f}s; measured on {digits['measured_on']} held-out images, "
            f"seeds {digits['seeds']} (mean ± sd)\n"
        )
        print("| method | dim | precision@1 | precision@10 | mAP@10 | centroid accuracy | fit s |")
        print("|---|---|---|---|---|---|---|")
        for name, row in digits["rows"].items():
            print(
                f"| {name} | {int(row['dim'][0])} | {_mean_sd(row['precision@1'])} | "
                f"{_mean_sd(row['precision@10'])} | {_mean_sd(row['mAP@10'])} | "
                f"{_mean_sd(row['centroid accuracy'])} | {np.mean(row['fit seconds']):.1f} |"
            )
    if dups:
        print(f"\nDuplicates: {dups['photos']} photos ({dups['real_tiles']} tiles of sample photographs)\n")
        for name in TRANSFORMS:
            r = dups[name]
            d = r["default"]
            singles = dups["photos"] - r["originals"]
            print(
                f"{name}: {r['originals']} originals with copies + {singles} singles = {r['files']} files; "
                f"ingest {r['ingest_seconds']:.1f}s, duplicates {r['duplicates_seconds']:.2f}s"
            )
            print(
                f"  default threshold {r['threshold']}: pair precision {d['pair_precision']:.3f}, "
                f"pair recall {d['pair_recall']:.3f}, groups found exactly {d['group_recall']:.3f}, "
                f"false groups {d['false_groups']}, copies with their original "
                + ", ".join(f"{k} {v:.3f}" for k, v in d["copy_recall"].items())
            )
            print("\n| threshold | pair precision | pair recall | groups found | false groups |")
            print("|---|---|---|---|---|")
            for t, s in r["sweep"].items():
                print(
                    f"| {t:.2f} | {s['pair_precision']:.3f} | {s['pair_recall']:.3f} | "
                    f"{s['group_recall']:.3f} | {s['false_groups']} |"
                )
            print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="classic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--photos", type=int, default=200, help="photos in the duplicates collections")
    parser.add_argument("--only", choices=["digits", "duplicates"])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retrieval-quality-") as tmp:
        work = Path(tmp)
        digits = digits_table(args.model, args.seeds, work) if args.only != "duplicates" else None
        dups = duplicates_figures(args.model, args.photos, work) if args.only != "digits" else None
    print_markdown(digits, dups)
    if args.json:
        args.json.write_text(json.dumps({"digits": digits, "duplicates": dups}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

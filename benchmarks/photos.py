"""Benchmark photo sets built from Debian's mate-backgrounds and gnome-backgrounds (never committed).

    .venv/bin/python benchmarks/photos.py [--cache DIR] [--count 200]

Sources: every raster file under /usr/share/backgrounds (`apt-get install -y mate-backgrounds
gnome-backgrounds`): 17 JPEGs, 14 PNGs and 18 WebPs (16 of them 4096x4096, 16.8 MP). SVGs are left out.

- `library` (set i, a photo-library mix as cameras and phones make them), `count` files:
  80 % baseline JPEG and 10 % progressive JPEG, re-encoded at 12 MP (4000x3000), and 10 % PNG/WebP originals
  at their original sizes (half PNG, half WebP, chosen with a fixed seed). Each JPEG is a different crop of a
  source, flipped or not, slightly re-toned, upscaled with Lanczos, with mild sensor-like noise (sigma 2) and
  encoded at quality 90 with 4:2:0 chroma, as phones do; one in ten is stored sideways with EXIF
  orientation 6.
  Every file has distinct bytes, so ingest embeds every one (none is linked as a duplicate).
- `lossless` (set ii): every PNG and WebP original alone, at its original size (up to 16.8 MP).
- `baseline`: the baseline 12 MP JPEGs of `library` alone (hard links), the case measured in the issue.

Sets are written once into the cache (default ~/.cache/retrieval-bench/photos) and reused; a file
`SET.json` records how they were made, and a set is rebuilt when its recipe changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUNDS = Path("/usr/share/backgrounds")
DEFAULT_CACHE = Path("~/.cache/retrieval-bench/photos").expanduser()
JPEG_SIZE = (4000, 3000)  # 12 MP
JPEG_QUALITY = 90
NOISE_SIGMA = 2.0
RECIPE_VERSION = 1


def sources() -> dict[str, list[Path]]:
    """Raster backgrounds by format; raises when the Debian packages are missing."""
    if not BACKGROUNDS.is_dir():
        raise SystemExit(f"{BACKGROUNDS} is missing: apt-get install -y mate-backgrounds gnome-backgrounds")
    found: dict[str, list[Path]] = {"jpeg": [], "png": [], "webp": []}
    for path in sorted(BACKGROUNDS.rglob("*")):
        kind = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}.get(path.suffix.lower())
        if kind and path.is_file():
            found[kind].append(path)
    if not (found["jpeg"] and found["png"] and found["webp"]):
        raise SystemExit(
            f"too few backgrounds under {BACKGROUNDS}: apt-get install -y mate-backgrounds gnome-backgrounds"
        )
    return found


def _recipe(name: str, **params: object) -> dict[str, object]:
    return {"set": name, "version": RECIPE_VERSION, **params}


def _ready(folder: Path, recipe: dict[str, object]) -> bool:
    marker = folder / "SET.json"
    return marker.is_file() and json.loads(marker.read_text()) == recipe


def _finish(folder: Path, recipe: dict[str, object]) -> Path:
    (folder / "SET.json").write_text(json.dumps(recipe, indent=1))
    return folder


def lossless_set(cache: Path = DEFAULT_CACHE) -> Path:
    """Set (ii): every PNG and WebP background, copied byte for byte."""
    src = sources()
    files = src["png"] + src["webp"]
    recipe = _recipe("lossless", files=[str(p) for p in files])
    folder = cache / "lossless"
    if _ready(folder, recipe):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, folder / f"{path.parent.name}-{path.name}")
    return _finish(folder, recipe)


def library_set(count: int = 200, cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """Set (i): `count` files, 80 % baseline JPEG, 10 % progressive JPEG (12 MP), 10 % PNG/WebP originals."""
    if count < 20:
        raise SystemExit("the library set needs at least 20 files (10 % of it is PNG/WebP)")
    src = sources()
    n_lossless = count // 10
    n_progressive = count // 10
    n_baseline = count - n_lossless - n_progressive
    rng = np.random.default_rng(seed)
    n_png = min(n_lossless // 2, len(src["png"]))
    n_webp = min(n_lossless - n_png, len(src["webp"]))
    originals = [src["png"][i] for i in sorted(rng.choice(len(src["png"]), n_png, replace=False))]
    originals += [src["webp"][i] for i in sorted(rng.choice(len(src["webp"]), n_webp, replace=False))]
    n_baseline += n_lossless - len(originals)  # too few originals: fill with JPEGs
    content = src["jpeg"] + src["png"] + src["webp"]
    recipe = _recipe(
        "library",
        count=count,
        seed=seed,
        baseline=n_baseline,
        progressive=n_progressive,
        originals=[str(p) for p in originals],
        content=[str(p) for p in content],
        size=list(JPEG_SIZE),
        quality=JPEG_QUALITY,
        noise=NOISE_SIGMA,
    )
    folder = cache / f"library-{count}"
    if _ready(folder, recipe):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "DCIM").mkdir(parents=True)
    (folder / "Downloads").mkdir()

    for path in originals:
        shutil.copyfile(path, folder / "Downloads" / f"{path.parent.name}-{path.name}")

    # One noise field, shifted per photo, keeps generation fast while every file stays distinct.
    noise = rng.normal(0.0, NOISE_SIGMA, (JPEG_SIZE[1] + 64, JPEG_SIZE[0] + 64, 3)).astype(np.float32)
    jobs = [(i, i >= n_baseline) for i in range(n_baseline + n_progressive)]
    by_source: dict[int, list[tuple[int, bool]]] = {}
    for job in jobs:
        by_source.setdefault(int(rng.integers(len(content))), []).append(job)
    for source_index, group in sorted(by_source.items()):
        with Image.open(content[source_index]) as opened:
            base = opened.convert("RGB")
        for number, progressive in group:
            photo = _camera_photo(base, rng, noise)
            sideways = rng.random() < 0.1
            exif = Image.Exif()
            exif[0x010F] = "retrieval-bench"  # Make
            exif[0x0132] = f"2024:06:{1 + number % 28:02d} 12:{number % 60:02d}:00"  # DateTime
            if sideways:  # stored as the sensor saw it; the viewer rotates it upright
                photo = photo.transpose(Image.Transpose.ROTATE_90)
                exif[0x0112] = 6
            photo.save(
                folder / "DCIM" / f"IMG_{number:04d}.jpg",
                "JPEG",
                quality=JPEG_QUALITY,
                subsampling="4:2:0",
                progressive=progressive,
                optimize=False,
                exif=exif,
            )
    return _finish(folder, recipe)


def baseline_set(count: int = 200, cache: Path = DEFAULT_CACHE) -> Path:
    """The baseline 12 MP JPEGs of the library set alone (hard links): the case the issue measured first."""
    library = library_set(count, cache)
    files = sorted(p for p in (library / "DCIM").iterdir() if not _progressive(p))
    recipe = _recipe("baseline", count=count, files=[p.name for p in files])
    folder = cache / f"baseline-{count}"
    if _ready(folder, recipe):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).hardlink_to(path)
    return _finish(folder, recipe)


def _progressive(path: Path) -> bool:
    with Image.open(path) as im:
        return bool(im.info.get("progressive"))


def _camera_photo(base: Image.Image, rng: np.random.Generator, noise: np.ndarray) -> Image.Image:
    w, h = base.size
    aspect = JPEG_SIZE[0] / JPEG_SIZE[1]
    scale = rng.uniform(0.7, 1.0)
    cw = min(w, int(h * aspect)) * scale
    ch = cw / aspect
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = base.resize(JPEG_SIZE, Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    dy, dx = (int(v) for v in rng.integers(0, 64, 2))
    pixels = np.asarray(crop, dtype=np.float32) * gain + noise[dy : dy + JPEG_SIZE[1], dx : dx + JPEG_SIZE[0]]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def describe(folder: Path) -> dict[str, object]:
    """Counts and sizes of a set, by kind, for the benchmark report."""
    kinds: dict[str, dict[str, float]] = {}
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SET.json"):
        with Image.open(path) as im:
            kind = im.format or "?"
            if kind == "JPEG" and im.info.get("progressive"):
                kind = "JPEG progressive"
            entry = kinds.setdefault(kind, {"files": 0, "megapixels": 0.0, "megabytes": 0.0})
            entry["files"] += 1
            entry["megapixels"] += im.width * im.height / 1e6
            entry["megabytes"] += path.stat().st_size / 1e6
        digest.update(path.name.encode())
    for entry in kinds.values():
        entry["megapixels"] = round(entry["megapixels"] / entry["files"], 1)
        entry["megabytes"] = round(entry["megabytes"] / entry["files"], 2)
    return {"folder": str(folder), "kinds": kinds, "files": sum(int(e["files"]) for e in kinds.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    for folder in (library_set(args.count, args.cache), lossless_set(args.cache), baseline_set(args.count)):
        print(json.dumps(describe(folder)))


if __name__ == "__main__":
    main()

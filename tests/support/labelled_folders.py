"""Labelled folders for quality tests: scikit-learn's digits (offline) as small PNGs, one folder a class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(folder: Path, per_class: int, *, seed: int = 0, side: int = 32) -> Path:
    """`per_class` digits of each class 0-9 (drawn at random), upscaled to `side` px, in folder/<digit>/."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        chosen = rng.choice(np.flatnonzero(digits.target == c), size=per_class, replace=False)
        for i in chosen:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
            image.save(folder / str(c) / f"digit{i:04d}.png")
    return folder

"""Distinct drawn "photos": a colour gradient, random shapes and texture per seed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def draw_photo(seed: int, size: tuple[int, int] = (192, 144)) -> Image.Image:
    """A distinct 'photo' per seed: a colour gradient, random shapes and texture."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.uniform(0, 255, size=(2, 2, 3))
    ys, xs = np.mgrid[0:h, 0:w]
    fy, fx = (ys / max(h - 1, 1))[..., None], (xs / max(w - 1, 1))[..., None]
    grad = (
        base[0, 0] * (1 - fx) * (1 - fy)
        + base[0, 1] * fx * (1 - fy)
        + base[1, 0] * (1 - fx) * fy
        + base[1, 1] * fx * fy
    )
    freq = rng.uniform(0.05, 0.4)
    texture = 30 * np.sin(xs * freq + rng.uniform(0, 6))[..., None] * rng.uniform(-1, 1, 3)
    img = Image.fromarray(np.clip(grad + texture, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            pen.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            pen.rectangle((x0, y0, x1, y1), fill=colour)
    return img

"""Shared fixtures: a private index home per test, CPU only, and photos drawn in the test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own RETRIEVAL_HOME, so nothing touches ./indexes."""
    path = tmp_path / "home"
    monkeypatch.setenv("RETRIEVAL_HOME", str(path))
    return path


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


@pytest.fixture
def make_photos(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write photos 0..n-1 (seeded) into a folder; returns their paths."""

    def make(n: int, folder: Path | None = None, start: int = 0, fmt: str = "JPEG") -> list[Path]:
        folder = folder or tmp_path / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        paths = []
        for i in range(start, start + n):
            path = folder / f"photo{i:03d}.{ext}"
            draw_photo(i).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            paths.append(path)
        return paths

    return make


@pytest.fixture
def ghostscript_runs(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to run Ghostscript (Pillow's EPS plugin) is recorded here instead of run; Ghostscript
    counts as installed, so a decoder that would use it does."""
    from PIL import EpsImagePlugin

    runs: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> None:
        runs.append(args)
        raise OSError("ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return runs


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus 2.3 standalone server for the whole session (~3 s to start): its URI.

    Skipped only where the `milvus-server` extra (the PyPI `milvus` package) is missing; `make test` and
    CI install it. The server holds no credentials (auth is off by default in 2.3)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip(
        "milvus", reason="no Milvus server: pip install -e '.[milvus-server]' (make test does)"
    )
    from services import running_milvus

    with running_milvus(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri

"""Shared fixtures: a private index home per test, CPU only, and photos drawn in the test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.photos import draw_photo

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own RETRIEVAL_HOME, so nothing touches ./indexes."""
    path = tmp_path / "home"
    monkeypatch.setenv("RETRIEVAL_HOME", str(path))
    return path


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
    from support.services import running_milvus

    with running_milvus(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri

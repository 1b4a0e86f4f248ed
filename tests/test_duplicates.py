"""Near-duplicate groups: union-find over index neighbours; copies made in the test, found at the default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import draw_photo
from PIL import Image, ImageEnhance
from retrieval_cli.main import app
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.search.duplicates import union_groups

ORIGINALS = 20
SINGLES = 20


def test_links_are_joined_into_connected_groups_with_their_weakest_link() -> None:
    pairs = [(1, 2, 0.9), (2, 3, 0.85), (5, 6, 0.95), (3, 1, 0.99)]
    assert sorted(union_groups(pairs)) == [([1, 2, 3], 0.85), ([5, 6], 0.95)]


def _copies(original: Image.Image, stem: Path) -> list[Path]:
    """A resized, a re-compressed, a 90 % cropped and a brightened copy of `original`."""
    w, h = original.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    made = {
        "half.png": original.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "q30.jpg": original,
        "crop.png": original.crop((dx, dy, w - dx, h - dy)),
        "bright.png": ImageEnhance.Brightness(original).enhance(1.1),
    }
    paths = []
    for suffix, image in made.items():
        path = stem.with_name(f"{stem.name}-{suffix}")
        image.save(path, **({"quality": 30} if suffix.endswith(".jpg") else {}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """An index "dups" (classic) of ORIGINALS photos with four altered copies each (the first also copied
    byte for byte) and SINGLES unrelated photos; returns its home and the true groups as sets of paths."""
    root = tmp_path_factory.mktemp("duplicates")
    folder = root / "photos"
    folder.mkdir()
    groups = []
    for seed in range(ORIGINALS):
        original = folder / f"photo{seed:02d}.png"
        draw_photo(seed, (192, 144)).save(original)
        groups.append({str(original), *map(str, _copies(Image.open(original), original))})
    shutil.copy(folder / "photo00.png", folder / "photo00-same-bytes.png")
    groups[0].add(str(folder / "photo00-same-bytes.png"))
    for seed in range(100, 100 + SINGLES):
        draw_photo(seed, (192, 144)).save(folder / f"single{seed}.png")
    with Engine("dups", home=root / "home", model="classic") as engine:
        engine.ingest(folder)
    return root / "home", groups


def test_copies_are_grouped_and_unrelated_photos_are_not(indexed) -> None:
    home, truth = indexed
    with Engine("dups", home=home) as engine:
        report = engine.duplicates()
    found = [{p for m in g.members for p in m.paths} for g in report.groups]
    recall = sum(group in found for group in truth) / len(truth)
    false_groups = [g for g in found if not any(g <= group for group in truth)]
    assert report.threshold == 0.82 and report.images == ORIGINALS * 5 + SINGLES
    assert recall >= 0.95, f"found {recall:.0%} of the copy groups"
    assert false_groups == []


def test_duplicates_command_lists_groups_as_json_and_as_a_table(indexed) -> None:
    home, truth = indexed
    where = ["--index", "dups", "--home", str(home)]
    as_json = CliRunner().invoke(app, ["duplicates", *where, "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    biggest = payload["groups"][0]
    assert biggest["files"] == 6 and biggest["images"] == 5
    assert {p for m in biggest["members"] for p in m["paths"]} == truth[0]
    strict = CliRunner().invoke(app, ["duplicates", *where, "--threshold", "1.0", "--json"])
    # identical bytes are one image in the index: still a group when no two images are close enough
    assert [g["files"] for g in json.loads(strict.stdout)["groups"]] == [2]
    table = CliRunner().invoke(app, ["duplicates", *where])
    assert table.exit_code == 0
    assert "20 groups of copies among 120 images (cosine >= 0.820" in table.stdout
    bad = CliRunner().invoke(app, ["duplicates", *where, "--threshold", "1.5"])
    assert bad.exit_code == 2

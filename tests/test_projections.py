"""Projections: PCA, LDA and the triplet head; saving them, and an index that embeds through one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_cli.main import app
from support.labelled_folders import write_digits
from typer.testing import CliRunner

from retrieval.embedders import create_embedder
from retrieval.embedders.projections import (
    HeadParams,
    Projection,
    batch_hard_triplet_loss,
    fit_head,
    fit_projection,
)
from retrieval.engine import Engine
from retrieval.errors import IndexCorruptError, IndexMismatchError, UsageError
from retrieval.files.decoding import decode_image
from retrieval.quality.evaluation import leave_one_out


def _classes_hidden_in_a_quiet_plane(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four classes at (+-1, +-1) on axes 0-1 (spread 0.3); 14 other axes carry noise of spread 1."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    x = rng.normal(size=(len(labels), 16))
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    x[:, :2] = corners[labels] + rng.normal(scale=0.3, size=(len(labels), 2))
    return x.astype(np.float32), labels


def test_batch_hard_triplet_loss_matches_a_case_worked_by_hand() -> None:
    # 1-D points: A at 0 and 1, B at 1.5 and 4; margin 0.5.
    # anchor  farthest positive  nearest negative  max(0, pos - neg + 0.5)
    #   0            1                1.5                 0
    #   1            1                0.5                 1
    #   1.5          2.5              0.5                 2.5
    #   4            2.5              3                   0
    points = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    loss = batch_hard_triplet_loss(points, torch.tensor([0, 0, 1, 1]), margin=0.5)
    assert float(loss) == pytest.approx((0 + 1 + 2.5 + 0) / 4)


@pytest.mark.parametrize("kind", ["pca", "lda", "head"])
def test_a_saved_projection_gives_the_same_vectors_after_loading(kind: str, tmp_path: Path) -> None:
    x, labels = _classes_hidden_in_a_quiet_plane(20, seed=0)
    projection = fit_projection(kind, x, labels, dims=2, head=HeadParams(steps=20), embedder_id="test:v1")
    projection.save(tmp_path)
    loaded = Projection.load(tmp_path)
    assert loaded.kind == kind and loaded.output_dim == 2 and loaded.info["embedder_id"] == "test:v1"
    out = loaded.apply(x)
    np.testing.assert_allclose(out, projection.apply(x), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_lda_finds_the_class_plane_that_raw_cosine_misses() -> None:
    x, labels = _classes_hidden_in_a_quiet_plane(60, seed=1)
    test_x, test_labels = _classes_hidden_in_a_quiet_plane(60, seed=2)
    lda = fit_projection("lda", x, labels)
    raw = leave_one_out(test_x, test_labels, ks=(5,)).precision[5]
    projected = leave_one_out(lda.apply(test_x), test_labels, ks=(5,)).precision[5]
    assert lda.output_dim == 3
    assert projected - raw >= 0.25, f"raw {raw:.3f}, LDA {projected:.3f}"


def test_impossible_projection_settings_are_refused() -> None:
    x, labels = _classes_hidden_in_a_quiet_plane(5, seed=0)
    with pytest.raises(UsageError, match="classes-1 = 3"):
        fit_projection("lda", x, labels, dims=4)
    with pytest.raises(UsageError, match="unknown projection"):
        fit_projection("tsne", x, labels)
    with pytest.raises(UsageError, match="two classes"):
        fit_head(x, np.zeros(len(x)))


def test_a_garbled_projection_is_reported_as_corrupt(tmp_path: Path) -> None:
    x, labels = _classes_hidden_in_a_quiet_plane(5, seed=0)
    fit_projection("pca", x, labels, dims=2).save(tmp_path)
    (tmp_path / "projection.npz").write_bytes(b"not an npz file")
    with pytest.raises(IndexCorruptError, match="cannot be read"):
        Projection.load(tmp_path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=14)


def test_an_index_started_with_a_projection_embeds_images_and_queries_through_it(
    digits: Path, make_photos
) -> None:
    photos = make_photos(5)
    with Engine("digits-pca", model="classic") as engine:
        projection = engine.fit_projection(digits, "pca", dims=128)
        report = engine.ingest(photos[0].parent)
        assert report.embedded == 5
        assert engine.store.dim == 128 and engine.manifest["dim"] == 128
        assert engine.manifest["projection"]["kind"] == "pca"
        with create_embedder("classic") as classic:
            decoded = [decode_image(p, min_side=classic.input_size).image for p in photos]
            raw = classic.embed_images(decoded)
        stored = engine.store.vectors(sorted(int(i) for i in engine.store.ids()))
        np.testing.assert_allclose(stored, projection.apply(raw), atol=1e-4)
    with Engine("digits-pca") as reopened:  # as another process would open it
        hits = reopened.search_image(photos[2], k=1)
        assert hits[0].path == str(photos[2]) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert reopened.embedder.dim == 128
        with pytest.raises(UsageError, match="already exists"):
            reopened.fit_projection(digits, "lda")


def test_an_index_started_with_lda_can_be_filled(digits: Path, make_photos) -> None:
    photos = make_photos(3)
    with Engine("digits-lda", model="classic") as engine:
        engine.fit_projection(digits, "lda")
        assert engine.ingest(photos[0].parent).embedded == 3
        assert engine.store.dim == 9
        assert engine.search_image(photos[1], k=1)[0].path == str(photos[1])


def test_a_projection_fitted_on_another_model_is_refused(digits: Path) -> None:
    x, labels = _classes_hidden_in_a_quiet_plane(5, seed=0)
    other = fit_projection("pca", x, labels, dims=2, embedder_id="clip:ViT-B-32/openai")
    with Engine("wrong", model="classic") as engine, pytest.raises(IndexMismatchError, match="fitted on"):
        engine.set_projection(other)
    assert not Engine("wrong").exists


def test_eval_saves_the_projection_it_measured_into_a_new_index(digits: Path, home: Path) -> None:
    args = ["eval", str(digits), "--model", "classic", "--split", "0.5", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--save-projection", "pca", "--dims", "8", "--index", "pca8"])
    assert result.exit_code == 0, result.output
    assert "ingest DIR --index pca8" in result.stdout
    with Engine("pca8") as engine:
        assert engine.manifest["projection"]["kind"] == "pca"
        assert engine.manifest["projection"]["fitted_on"] == 70  # the training half only
        assert engine.manifest["dim"] == 8
    again = CliRunner().invoke(app, [*args, "--save-projection", "pca", "--index", "pca8"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    nameless = CliRunner().invoke(app, [*args, "--save-projection", "lda"])
    assert nameless.exit_code == 2 and "--index" in nameless.stderr
    raw = CliRunner().invoke(app, [*args, "--save-projection", "raw", "--index", "raw"])
    assert raw.exit_code == 2 and "takes one of pca, lda, head" in raw.stderr

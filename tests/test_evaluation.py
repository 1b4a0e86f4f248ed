"""Evaluation on labelled folders: retrieval metrics, nearest-centroid report, split, the `eval` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from retrieval_cli.main import app
from support.labelled_folders import write_digits
from typer.testing import CliRunner

from retrieval.embedders import create_embedder
from retrieval.embedders.projections import HeadParams
from retrieval.errors import UsageError
from retrieval.quality.evaluation import (
    embed_labelled,
    evaluate,
    evaluate_folder,
    leave_one_out,
    load_labelled_folder,
    nearest_centroid,
    stratified_split,
)

QUICK_HEAD = HeadParams(steps=100)


def _at(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_leave_one_out_matches_a_case_worked_by_hand() -> None:
    # Points on the unit circle, so cosine order is angular order.
    #   p0 0° A, p1 10° A, p2 25° B, p3 45° A, p4 180° B
    # query  nearest two (label)        P@1 P@2 R@2  AP@2
    #   p0   p1 A, p2 B                  1  1/2 1/2  (1*1 + 0)/2 = 1/2
    #   p1   p0 A, p2 B                  1  1/2 1/2  1/2
    #   p2   p1 A, p3 A  (1 relevant)    0   0   0   0
    #   p3   p2 B, p1 A                  0  1/2 1/2  (0 + 1/2)/2 = 1/4
    #   p4   p3 A, p2 B  (1 relevant)    0  1/2  1   (0 + 1/2)/min(2, 1) = 1/2
    scores = leave_one_out(_at([0, 10, 25, 45, 180]), np.array([0, 0, 1, 0, 1]), ks=(1, 2))
    assert scores.queries == 5
    assert scores.precision[1] == pytest.approx(2 / 5)
    assert scores.precision[2] == pytest.approx(2 / 5)
    assert scores.recall[2] == pytest.approx(2.5 / 5)
    assert scores.map[2] == pytest.approx(1.75 / 5)


def test_a_query_alone_in_its_class_is_not_counted() -> None:
    scores = leave_one_out(_at([0, 10, 90]), np.array([0, 0, 1]), ks=(1,))
    assert scores.queries == 2
    assert scores.precision[1] == 1.0


def test_nearest_centroid_matches_a_case_worked_by_hand() -> None:
    # Centres: a = mean of (1,0),(0,1) -> 45°; b = (-1,0); c = (0,-1).
    train = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    train_labels = np.array([0, 0, 1, 2])
    # test point   true  cosine-nearest centre
    # (1, .2)       a     a
    # (.1, 1)       a     a
    # (-1, .9)      b     b
    # (.9, -.2)     b     a   (cos to a .54 > c .22 > b -.98)
    # (-.2, -1)     c     c
    # (-1, -.3)     c     b   (cos to b .96 > c .29)
    test = np.array([[1, 0.2], [0.1, 1], [-1, 0.9], [0.9, -0.2], [-0.2, -1], [-1, -0.3]], dtype=np.float32)
    test_labels = np.array([0, 0, 1, 1, 2, 2])
    report = nearest_centroid(train, train_labels, test, test_labels, ["a", "b", "c"], held_out=True)
    # rows: true class, columns: assigned class
    assert report.confusion == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    # precision = right / assigned to the class; recall = right / images of the class
    assert report.precision == pytest.approx([2 / 3, 1 / 2, 1 / 1])
    assert report.recall == pytest.approx([2 / 2, 1 / 2, 1 / 2])
    assert report.mean_precision == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert report.mean_recall == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.support == [2, 2, 2]


def test_split_holds_out_part_of_every_class_and_keeps_singletons_for_training() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2])
    train, test = stratified_split(labels, 0.3, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 1, 0]
    assert 14 in train
    with pytest.raises(UsageError, match="between 0 and 1"):
        stratified_split(labels, 1.0)


def test_a_folder_without_class_folders_is_refused(tmp_path: Path, make_photos) -> None:
    make_photos(3, tmp_path / "flat")
    with pytest.raises(UsageError, match="at least two"):
        load_labelled_folder(tmp_path / "flat")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """40 digits a class embedded with `classic` (the same decoding path as ingest)."""
    folder = write_digits(tmp_path_factory.mktemp("digits"), per_class=40)
    with create_embedder("classic") as embedder:
        return folder, embed_labelled(load_labelled_folder(folder), embedder)


def test_lda_and_the_triplet_head_beat_raw_embeddings_on_held_out_digits(digits) -> None:
    _, embedded = digits
    report = evaluate(
        embedded, ks=(1, 10), test_fraction=0.5, methods=("raw", "lda", "head"), head=QUICK_HEAD
    )
    by_name = {m.name: m for m in report.methods}
    raw = by_name["raw"].retrieval.precision[10]
    lda_gain = by_name["lda"].retrieval.precision[10] - raw
    head_gain = by_name["head"].retrieval.precision[10] - raw
    assert report.n_measured == 200 and report.n_fit == 200
    assert all(m.retrieval.held_out and m.centroid.held_out for m in report.methods)
    assert by_name["lda"].dim == 9
    # Measured on images none of the projections saw.
    assert lda_gain >= 0.05, f"LDA precision@10 {raw:.3f} -> +{lda_gain:.3f}"
    assert head_gain >= 0.05, f"head precision@10 {raw:.3f} -> +{head_gain:.3f}"


def test_figures_measured_on_fitted_data_are_marked_so(digits) -> None:
    _, embedded = digits
    report = evaluate(embedded, ks=(5,), methods=("raw", "pca"))
    raw, pca = report.methods
    assert not report.held_out
    assert raw.retrieval.held_out  # leave-one-out on raw vectors fits nothing
    assert not raw.centroid.held_out and not pca.retrieval.held_out and not pca.centroid.held_out
    assert report.to_dict()["methods"][1]["retrieval"]["held_out"] is False


def test_eval_command_compares_methods_on_one_split(digits) -> None:
    folder, _ = digits
    args = ["eval", str(folder), "--model", "classic", "-k", "1,10", "--split", "0.5"]
    result = CliRunner().invoke(app, [*args, "--compare", "--head-steps", "50", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [m["name"] for m in payload["methods"]] == ["raw", "pca", "lda", "head"]
    assert payload["held_out"] is True and payload["measured_on"] == 200
    assert len(payload["methods"][0]["centroid"]["confusion"]) == 10


def test_eval_table_warns_when_figures_come_from_fitted_data(digits) -> None:
    folder, _ = digits
    result = CliRunner().invoke(app, ["eval", str(folder), "--model", "classic", "-k", "5"])
    assert result.exit_code == 0, result.output
    assert "precision@5" in result.stdout
    assert "fitted" in result.stdout


def test_eval_command_reports_a_bad_folder_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "only" / "one").mkdir(parents=True)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "only"), "--model", "classic"])
    assert result.exit_code == 2
    assert "at least two" in result.stderr


def test_tiny_clip_runs_through_the_same_evaluation(tmp_path: Path) -> None:
    folder = write_digits(tmp_path / "digits", per_class=4)
    with pytest.warns(UserWarning, match="RANDOM"):
        embedder = create_embedder("clip:tiny-test", pretrained=None, device="cpu")
    with embedder:
        report = evaluate_folder(folder, embedder, ks=(1, 3), test_fraction=0.5, methods=("raw", "lda"))
    assert report.embedder_id == embedder.id
    assert [m.dim for m in report.methods] == [embedder.dim, 9]
    assert report.n_measured == 20

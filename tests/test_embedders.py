"""Embedders: name parsing, the tiny CLIP, a random ResNet, the classic features, and offline failures."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter

from retrieval.embedders import (
    Embedder,
    EmbedderSpec,
    RandomWeightsWarning,
    create_embedder,
    list_embedders,
    parse_embedder_name,
)
from retrieval.embedders import clip as clip_module
from retrieval.embedders import resnet as resnet_module
from retrieval.errors import QueryError, UsageError, WeightsUnavailableError
from retrieval.files.decoding import decode_image


def picture(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A distinct image per seed: a gradient, a noise texture or stripes, with random shapes on top."""
    rng = np.random.default_rng(seed)
    w, h = size
    kind = seed % 3
    if kind == 0:
        corners = rng.uniform(0, 255, (2, 3))
        ramp = np.linspace(0, 1, w)[None, :, None]
        base = corners[0] * (1 - ramp) + corners[1] * ramp
        pixels = np.broadcast_to(base, (h, w, 3))
    elif kind == 1:
        noise = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
        pixels = np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    else:
        period = rng.integers(6, 30)
        stripes = (np.arange(w) // period % 2)[None, :, None]
        pixels = np.broadcast_to(np.where(stripes, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)), (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=colour)
    return image


def quiet_create(name: str, **kwargs: object) -> Embedder:
    """Create an embedder on CPU, silencing the random-weights warning the test does not care about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_embedder(name, device="cpu", **kwargs)  # type: ignore[arg-type]


def assert_unit_rows(vectors: np.ndarray, rows: int, dim: int) -> None:
    assert vectors.shape == (rows, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pretrained", "expected"),
    [
        ("classic", "default", ("classic", "v2", None)),
        ("classic:v1", "default", ("classic", "v1", None)),
        ("classic:v2", None, ("classic", "v2", None)),
        ("clip", "default", ("clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("clip:ViT-B-32", "default", ("clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("clip:ViT-B-32/laion2b_s34b_b79k", "default", ("clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("clip:ViT-B-32", "openai", ("clip", "ViT-B-32", "openai")),
        ("clip:ViT-B-16/openai", "openai", ("clip", "ViT-B-16", "openai")),
        ("clip:ViT-B-32", None, ("clip", "ViT-B-32", None)),
        ("clip:ViT-B-32", "none", ("clip", "ViT-B-32", None)),
        ("clip:tiny-test", "default", ("clip", "tiny-test", None)),
        ("resnet50", "default", ("resnet", "resnet50", "IMAGENET1K_V2")),
        ("resnet:resnet18", "DEFAULT", ("resnet", "resnet18", "IMAGENET1K_V1")),
        ("resnet50", "imagenet1k_v1", ("resnet", "resnet50", "IMAGENET1K_V1")),
        ("resnet34", None, ("resnet", "resnet34", None)),
    ],
)
def test_good_names_parse_to_canonical_specs(name: str, pretrained: str | None, expected: tuple) -> None:
    assert parse_embedder_name(name, pretrained) == EmbedderSpec(*expected)


@pytest.mark.parametrize(
    ("name", "pretrained", "must_mention"),
    [
        ("vgg16", "default", ["'vgg16'", "classic", "clip:tiny-test", "resnet50"]),
        ("resnet99", "default", ["resnet99", "resnet18", "resnet152"]),
        ("clip:ViT-B-31", "default", ["ViT-B-31", "ViT-B-32"]),
        ("clip:ViT-B-32/not_a_tag", "default", ["not_a_tag", "laion2b_s34b_b79k", "openai"]),
        ("resnet50", "IMAGENET9", ["IMAGENET9", "IMAGENET1K_V2"]),
        ("classic", "openai", ["classic", "openai"]),
        ("classic:v3", "default", ["'v3'", "classic:v1", "classic:v2"]),
        ("clip:tiny-test", "openai", ["tiny-test", "none"]),
        ("clip:ViT-B-32/openai", "laion2b_s34b_b79k", ["openai", "laion2b_s34b_b79k"]),
    ],
)
def test_bad_names_raise_usage_errors_naming_the_value_and_the_choices(
    name: str, pretrained: str, must_mention: list[str]
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_embedder_name(name, pretrained)
    for text in must_mention:
        assert text in str(caught.value)


def test_every_listed_name_parses() -> None:
    names = list_embedders()
    assert {"classic", "clip", "clip:ViT-B-32/laion2b_s34b_b79k", "clip:tiny-test", "resnet50"} <= set(names)
    assert len(names) == len(set(names))
    for name in names:
        spec = parse_embedder_name(name)
        assert spec.family in {"classic", "clip", "resnet"}


# -- tiny CLIP --------------------------------------------------------------------------------------


def test_tiny_clip_embeds_images_and_texts_as_unit_vectors_and_warns_it_is_random() -> None:
    images = [picture(seed) for seed in range(3)]
    with pytest.warns(RandomWeightsWarning, match="no semantic meaning"):
        embedder = create_embedder("clip:tiny-test", device="cpu")
    with embedder:
        assert (embedder.id, embedder.dim, embedder.input_size) == ("clip:tiny-test:random-seed0", 64, 64)
        assert embedder.supports_text and embedder.device == "cpu"
        assert embedder.preprocess_id.startswith("open_clip:shortest64:bicubic")
        assert_unit_rows(embedder.embed_images(images), 3, 64)
        texts = embedder.embed_texts(["a red square", "a blue circle"])
        assert_unit_rows(texts, 2, 64)
        assert not np.allclose(texts[0], texts[1])
    with pytest.raises(UsageError, match="closed"):
        embedder.embed_images(images)


def test_tiny_clip_is_the_same_model_every_time_it_is_created() -> None:
    images = [picture(seed) for seed in range(2)]
    torch.manual_seed(1234)  # the caller's RNG state must neither matter nor be disturbed
    before = torch.rand(1)
    with quiet_create("clip:tiny-test") as first, quiet_create("clip:tiny-test") as second:
        np.testing.assert_allclose(first.embed_images(images), second.embed_images(images), atol=1e-6)
        np.testing.assert_allclose(first.embed_texts(["x"]), second.embed_texts(["x"]), atol=1e-6)
    torch.manual_seed(1234)
    assert torch.equal(torch.rand(1), before)


def test_a_short_text_query_runs_on_one_thread_and_a_large_batch_on_all_with_the_same_vectors() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    try:
        with quiet_create("clip:tiny-test") as embedder:
            hook = embedder._live_model().transformer.register_forward_pre_hook(
                lambda *_: seen.append(torch.get_num_threads())
            )
            short = embedder.embed_texts(["a red square"])
            batch = embedder.embed_texts(["a red square"] + [f"a blue circle number {i}" for i in range(11)])
            hook.remove()
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
    np.testing.assert_allclose(short[0], batch[0], atol=1e-5)


def test_a_local_clip_checkpoint_is_loaded_and_named_by_its_hash(tmp_path: Path) -> None:
    images = [picture(4)]
    with quiet_create("clip:tiny-test") as random_model:
        expected = random_model.embed_images(images)
        path = tmp_path / "tiny.pt"
        torch.save(random_model._model.state_dict(), path)
    with create_embedder("clip:tiny-test", weights=path, device="cpu") as loaded:
        assert loaded.id.startswith("clip:tiny-test:file:") and len(loaded.id.rsplit(":", 1)[1]) == 16
        assert loaded.spec.pretrained == loaded.id.split(":", 2)[2]
        np.testing.assert_allclose(loaded.embed_images(images), expected, atol=1e-5)


# -- ResNet -----------------------------------------------------------------------------------------


def test_random_resnet18_gives_512_unit_vectors_and_refuses_text() -> None:
    with quiet_create("resnet18", pretrained=None, batch_size=2) as embedder:
        assert (embedder.id, embedder.dim, embedder.input_size) == ("resnet:resnet18:random-seed0", 512, 256)
        assert not embedder.supports_text
        assert_unit_rows(embedder.embed_images([picture(seed, (96, 80)) for seed in range(3)]), 3, 512)
        with pytest.raises(QueryError) as caught:
            embedder.embed_texts(["a dog"])
    assert "resnet18, which has no text encoder" in str(caught.value)
    assert "--image" in str(caught.value)


def test_a_local_resnet_state_dict_is_loaded_and_named_by_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)
    with create_embedder("resnet18", weights=path, device="cpu") as embedder:
        assert embedder.id.startswith("resnet:resnet18:file:")
        assert_unit_rows(embedder.embed_images([picture(1, (64, 64))]), 1, 512)


@pytest.mark.parametrize("name", ["clip:tiny-test", "resnet18"])
def test_missing_or_garbage_weights_are_usage_errors_naming_the_file(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(UsageError, match=r"nowhere\.pt"):
        create_embedder(name, weights=missing, device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UsageError, match=r"garbage\.pt"):
        create_embedder(name, weights=garbage, device="cpu")


# -- classic ----------------------------------------------------------------------------------------


def test_classic_features_are_deterministic_unit_vectors_without_text() -> None:
    embedder = create_embedder("classic")
    images = [picture(seed) for seed in range(4)]
    first = embedder.embed_images(images)
    assert (embedder.id, embedder.dim) == ("classic:v2", 256)
    assert_unit_rows(first, 4, 256)
    np.testing.assert_array_equal(first, create_embedder("classic").embed_images(images))
    assert embedder.embed_images([]).shape == (0, 256)
    with pytest.raises(QueryError, match="classic, which has no text encoder"):
        embedder.embed_texts(["sunset"])


def test_classic_finds_a_resized_recompressed_copy_among_twenty_images() -> None:
    embedder = create_embedder("classic")

    def load(data: bytes) -> Image.Image:
        return decode_image(data, min_side=embedder.input_size).image

    originals, copies = [], []
    for seed in range(20):
        image = picture(seed)
        original = io.BytesIO()
        image.save(original, "PNG")
        originals.append(load(original.getvalue()))
        copy = io.BytesIO()
        half = image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)
        half.save(copy, "JPEG", quality=60)
        copies.append(load(copy.getvalue()))
    similarity = embedder.embed_images(copies) @ embedder.embed_images(originals).T
    assert list(similarity.argmax(axis=1)) == list(range(20))


# -- offline ----------------------------------------------------------------------------------------


def test_default_clip_offline_fails_fast_naming_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip_module, "_cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(clip_module, "network_reachable", lambda host: False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        create_embedder("clip", device="cpu")
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        "no cached weights for clip ViT-B-32/laion2b_s34b_b79k and no network; pass --weights PATH "
        "(a local checkpoint) or --pretrained none for random weights (testing only)"
    )


def test_a_failed_clip_download_is_reported_as_unavailable_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> str:
        raise OSError("connection reset by peer")

    monkeypatch.setattr(clip_module, "_cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(clip_module, "network_reachable", lambda host: True)
    monkeypatch.setattr(open_clip, "download_pretrained", refuse)
    with pytest.raises(WeightsUnavailableError, match=r"download failed \(connection reset.*--weights"):
        create_embedder("clip:ViT-B-32/openai", device="cpu")


def test_default_resnet50_without_cache_or_network_names_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setattr(resnet_module, "network_reachable", lambda host: False)
    with pytest.raises(WeightsUnavailableError) as caught:
        create_embedder("resnet50", device="cpu")
    message = str(caught.value)
    assert "resnet resnet50/IMAGENET1K_V2 and no network" in message
    assert "--weights PATH (a local state_dict)" in message and "--pretrained none" in message

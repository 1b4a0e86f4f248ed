"""The fast paths of ingest and search: shrink-on-load decoding, torch-free preprocessing in the decode
threads, decoding overlapped with the model, batched database writes, one index save per run, text encoding
trimmed to the query, and a query path that loads nothing after its first query."""

from __future__ import annotations

import functools
import io
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from sqlalchemy import event
from sqlalchemy.orm import Session
from support.photos import draw_photo

from retrieval import embedders
from retrieval.embedders import create_embedder
from retrieval.embedders.base import PillowPreprocess
from retrieval.embedders.classic import ClassicEmbedder
from retrieval.embedders.clip import encode_text
from retrieval.engine import Engine
from retrieval.files.decoding import ALPHA_BACKGROUND, decode_image
from retrieval.ingest.pipeline import Ingestor, IngestProgress
from retrieval.metadata import MetadataStore
from retrieval.vectors.hnsw.store import VectorStore

pytestmark = pytest.mark.filterwarnings("ignore::retrieval.embedders.RandomWeightsWarning")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def vit_transform() -> Any:
    """ViT-B-32's own inference transform (no model needed): bicubic 224, centre crop, normalise."""
    return open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)


def grey_levels(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|a - b| of two normalised tensors, back in 0..255 grey levels."""
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return ((a - b).abs() * std * 255).numpy()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=90)
    return buf.getvalue()


@functools.cache
def big_photo(seed: int) -> Image.Image:
    """A drawn 2400x1800 scene with fine stripes: where shrinking shortcuts alias most."""
    return draw_photo(seed, (2400, 1800))


# -- preprocessing ---------------------------------------------------------------------------------


def test_pillow_preprocess_equals_open_clip_transform(vit_transform: Any) -> None:
    fast = PillowPreprocess.from_compose(vit_transform)
    assert fast is not None
    for seed, size in ((0, (500, 375)), (1, (375, 500)), (2, (224, 224)), (3, (97, 300))):
        image = draw_photo(seed, size)
        out = fast(image)
        assert out.dtype == torch.float32 and out.shape == (3, 224, 224)
        assert torch.allclose(out, vit_transform(image), atol=1e-5)


def test_pillow_preprocess_refuses_a_transform_it_cannot_split() -> None:
    from torchvision import transforms

    tensor_first = transforms.Compose([transforms.ToTensor(), transforms.Resize(8)])
    assert PillowPreprocess.from_compose(tensor_first) is None
    assert PillowPreprocess.from_compose(lambda image: image) is None


def test_resnet_preprocess_equals_torchvision_recipe() -> None:
    from torchvision.models import ResNet18_Weights

    recipe = ResNet18_Weights.IMAGENET1K_V1.transforms()
    with create_embedder("resnet18", pretrained=None, device="cpu") as embedder:
        for seed, size in ((0, (500, 375)), (1, (300, 600))):
            image = draw_photo(seed, size)
            assert torch.allclose(embedder.preprocess(image), recipe(image), atol=1e-5)


# -- shrink-on-load decoding against the full decode ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_jpeg_draft_decode_stays_close_to_the_full_decode(vit_transform: Any, seed: int) -> None:
    fast_preprocess = PillowPreprocess.from_compose(vit_transform)
    assert fast_preprocess is not None
    data = encoded(big_photo(seed), "JPEG")
    drafted = decode_image(data, min_side=224)
    full = decode_image(data)
    assert drafted.image.size == (300, 225)  # DCT-scaled to 1/8 while decoding, not decoded in full
    assert (drafted.width, drafted.height) == (2400, 1800)
    diff = grey_levels(fast_preprocess(drafted.image), fast_preprocess(full.image))
    # Measured 0.7-2.8 levels on average over drawn scenes with fine stripes (BENCHMARKS.md).
    assert diff.mean() < 3.5


@pytest.mark.parametrize("seed", [0, 1])
def test_box_reduced_png_stays_within_a_grey_level_of_the_full_decode(vit_transform: Any, seed: int) -> None:
    fast_preprocess = PillowPreprocess.from_compose(vit_transform)
    assert fast_preprocess is not None
    data = encoded(big_photo(seed), "PNG")
    reduced = decode_image(data, min_side=224)
    full = decode_image(data)
    assert reduced.image.size == (1200, 900)  # halved by a box filter; 4x the model's input is kept
    diff = grey_levels(fast_preprocess(reduced.image), fast_preprocess(full.image))
    assert diff.mean() < 0.5
    assert diff.max() <= 4  # a 2x margin aliases fine stripes by up to 8 levels here


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_composited_on_mid_grey_like_alpha_composite(mode: str) -> None:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 4), dtype=np.uint8), "RGBA").convert(mode)
    grey = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
    expected = Image.alpha_composite(grey, image.convert("RGBA"))
    decoded = decode_image(encoded(image, "PNG")).image
    assert decoded.mode == "RGB"
    diff = np.abs(np.asarray(decoded, dtype=int) - np.asarray(expected.convert("RGB"), dtype=int))
    assert diff.max() <= 1


def test_embedding_of_the_draft_path_matches_the_full_decode() -> None:
    with create_embedder("clip:tiny-test", pretrained=None, device="cpu") as embedder:
        data = encoded(draw_photo(5, (1600, 1200)), "JPEG")
        drafted = decode_image(data, min_side=embedder.input_size)
        assert max(drafted.image.size) < 1600
        vectors = embedder.embed_images([drafted.image, decode_image(data).image])
    assert float(vectors[0] @ vectors[1]) > 0.999


def test_a_resnet_on_cpu_runs_large_batches_in_slices_of_eight_with_the_same_vectors() -> None:
    with create_embedder("resnet18", pretrained=None, device="cpu") as embedder:
        assert embedder.forward_batch == 8
        tensors = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(20)]
        rows: list[int] = []
        hook = embedder._live_model().register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
        sliced = embedder.embed_preprocessed(tensors)
        embedder.forward_batch = None
        whole = embedder.embed_preprocessed(tensors)
        hook.remove()
    assert rows == [8, 8, 4, 20]
    assert np.allclose(sliced, whole, atol=1e-5)


# -- ingest pipeline ---------------------------------------------------------------------------------


def write_photos(folder: Path, n: int, start: int = 0, size: tuple[int, int] = (96, 72)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"p{i:03d}.png"
        draw_photo(i, size).save(path)
        paths.append(path)
    return paths


class SlowClassic(ClassicEmbedder):
    """The classic embedder with a model that takes time and a log of who ran what, and when."""

    def __init__(self, *, embed_seconds: float = 0.0, preprocess_seconds: float = 0.0, batch_size: int = 8):
        super().__init__(batch_size=batch_size)
        self.embed_seconds = embed_seconds
        self.preprocess_seconds = preprocess_seconds
        self.embed_calls: list[tuple[float, float, int]] = []
        self.preprocess_calls: list[tuple[float, str]] = []
        self._log_lock = threading.Lock()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        time.sleep(self.preprocess_seconds)
        out = super().preprocess(image)
        with self._log_lock:
            self.preprocess_calls.append((time.monotonic(), threading.current_thread().name))
        return out

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        started = time.monotonic()
        time.sleep(self.embed_seconds)
        out = super().embed_preprocessed(batch)
        self.embed_calls.append((started, time.monotonic(), len(batch)))
        return out


@pytest.fixture
def index(tmp_path: Path) -> Callable[[Any], tuple[MetadataStore, VectorStore]]:
    opened: list[tuple[MetadataStore, VectorStore]] = []

    def make(embedder: Any) -> tuple[MetadataStore, VectorStore]:
        (tmp_path / "index").mkdir()
        meta = MetadataStore(tmp_path / "index" / "meta.sqlite")
        store = VectorStore.create(tmp_path / "index" / "vectors", embedder.dim)
        opened.append((meta, store))
        return meta, store

    yield make
    for meta, store in opened:
        store.close()
        meta.close()


def test_decoding_runs_in_worker_threads_while_the_model_embeds(tmp_path: Path, index: Any) -> None:
    write_photos(tmp_path / "photos", 32)
    embedder = SlowClassic(embed_seconds=0.2, preprocess_seconds=0.02, batch_size=8)
    meta, store = index(embedder)
    report = Ingestor(meta, store, embedder, batch_size=8, workers=2).run(tmp_path / "photos")
    assert report.embedded == 32
    assert [n for _, _, n in embedder.embed_calls] == [8, 8, 8, 8]
    assert all(name.startswith("retrieval-decode") for _, name in embedder.preprocess_calls)
    # Files are decoded while a batch is in the model: the model does not wait for one file at a time.
    during = [t for t, _ in embedder.preprocess_calls if any(a < t < b for a, b, _ in embedder.embed_calls)]
    assert len(during) >= 8


def test_database_rows_are_written_once_per_batch(tmp_path: Path, index: Any) -> None:
    write_photos(tmp_path / "photos", 24)
    embedder = SlowClassic(batch_size=8)
    meta, store = index(embedder)
    statements: list[str] = []
    flushes: list[int] = []
    commits: list[int] = []
    event.listen(meta.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    event.listen(meta.engine, "commit", lambda *a: commits.append(1))
    count_flush = lambda *a: flushes.append(1)  # noqa: E731
    event.listen(Session, "after_flush", count_flush)
    try:
        report = Ingestor(meta, store, embedder, batch_size=8).run(tmp_path / "photos")
    finally:
        event.remove(Session, "after_flush", count_flush)
    assert report.embedded == 24
    content_inserts = [s for s in statements if s.startswith("INSERT INTO contents")]
    assert 1 <= len(content_inserts) <= 3  # one executemany per batch of 8, not one INSERT per image
    assert len(flushes) <= 6  # the root row, three batches, the run's end; not one per image
    assert len(commits) == 1  # the run's one checkpoint
    assert len(meta.embedded_ids()) == 24


def test_index_is_saved_once_per_run_and_once_per_checkpoint(
    tmp_path: Path, index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_photos(tmp_path / "photos", 40)
    embedder = SlowClassic(batch_size=8)
    meta, store = index(embedder)
    saves: list[int] = []
    real_save = VectorStore.save

    def counting_save(self: VectorStore) -> int:
        saves.append(len(self))
        return real_save(self)

    monkeypatch.setattr(VectorStore, "save", counting_save)
    Ingestor(meta, store, embedder, batch_size=8).run(tmp_path / "photos")
    assert saves == [40]

    write_photos(tmp_path / "more", 40, start=40)
    Ingestor(meta, store, embedder, batch_size=8, checkpoint_every=16).run(tmp_path / "more")
    # checkpoints after 16 and 32 files, then the end of the run
    assert saves == [40, 56, 72, 80]


def test_ingest_numbers_new_rows_after_the_existing_ones(tmp_path: Path, index: Any) -> None:
    embedder = SlowClassic(batch_size=4)
    meta, store = index(embedder)
    write_photos(tmp_path / "a", 6)
    Ingestor(meta, store, embedder, batch_size=4).run(tmp_path / "a")
    write_photos(tmp_path / "b", 5, start=6)
    Ingestor(meta, store, embedder, batch_size=4).run(tmp_path / "b")
    assert meta.embedded_ids() == set(range(1, 12))
    assert {int(i) for i in store.ids()} == set(range(1, 12))


def test_progress_counts_decoded_and_embedded_files_that_only_grow_and_end_at_the_file_count(
    tmp_path: Path, home: Path
) -> None:
    paths = write_photos(tmp_path / "photos", 30)
    (tmp_path / "photos" / "copy.png").write_bytes(paths[0].read_bytes())  # linked, not embedded
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")  # failed
    seen: list[IngestProgress] = []
    with Engine(model="classic", batch_size=8) as engine:
        report = engine.ingest(tmp_path / "photos", progress=seen.append)
    assert (report.embedded, report.linked, len(report.failed)) == (30, 1, 1)
    ingest = [p for p in seen if p.phase == "ingest"]
    for count in ("decoded", "done", "embedded"):
        values = [getattr(p, count) for p in ingest]
        assert values == sorted(values), f"{count} went back"
    assert all(p.embedded <= p.done <= p.decoded for p in ingest)
    last = ingest[-1]
    assert (last.decoded, last.done, last.embedded, last.total) == (32, 32, 32, 32)
    assert sorted({p.decoded for p in ingest}) == list(range(33))  # told of every file as it is decoded
    # Embedded moves by the batch (of 8), decoding runs ahead of it by up to a batch.
    steps = [b.embedded - a.embedded for a, b in itertools.pairwise(ingest)]
    assert max(steps) >= 8
    assert max(p.decoded - p.embedded for p in ingest) >= 7


# -- text and query path -----------------------------------------------------------------------------


def test_text_encoding_runs_only_up_to_the_end_of_text_and_matches_the_full_context() -> None:
    with create_embedder("clip:tiny-test", pretrained=None, device="cpu") as embedder:
        model = embedder._live_model()
        tokens = open_clip.get_tokenizer("tiny-clip")(["a dog", "a red kite over a grey beach at dawn"])
        lengths: list[int] = []
        hook = model.transformer.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
        with torch.inference_mode():
            trimmed = encode_text(model, tokens)
            full = model.encode_text(tokens)
        hook.remove()
        assert lengths[0] == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
        assert lengths[1] == tokens.shape[1]
        assert torch.allclose(trimmed, full, atol=1e-5)
        vectors = embedder.embed_texts(["a dog", "a red kite over a grey beach at dawn"])
        assert np.allclose(vectors, torch.nn.functional.normalize(full, dim=-1).numpy(), atol=1e-5)


def test_queries_load_the_model_the_index_and_the_tokenizer_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_photos(tmp_path / "photos", 6)
    with Engine("q", model="clip:tiny-test", pretrained=None, device="cpu") as engine:
        engine.ingest(tmp_path / "photos")

    counts = {"model": 0, "store": 0, "tokenizer": 0}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(embedders, "create_embedder", counted("model", embedders.create_embedder))
    monkeypatch.setattr(VectorStore, "open", classmethod(counted("store", VectorStore.open.__func__)))
    monkeypatch.setattr(open_clip, "get_tokenizer", counted("tokenizer", open_clip.get_tokenizer))
    with Engine("q", device="cpu") as engine:
        for text in ("a cat", "a dog", "the sea", "a red house"):
            assert len(engine.search_text(text, k=3)) == 3
    assert counts == {"model": 1, "store": 1, "tokenizer": 1}


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_retrieval_makes_openmp_threads_wait_passively_unless_told_otherwise(
    given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, retrieval; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

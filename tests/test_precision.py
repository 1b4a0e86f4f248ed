"""The forward's precision (fp32, int8 on a CPU, fp16 on CUDA): recorded per index, never mixed, and int8
finding what fp32 finds. Models are tiny and random (clip:tiny-test); images are drawn in the test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from retrieval_cli.main import app
from typer.testing import CliRunner

from retrieval.embedders import RandomWeightsWarning, create_embedder
from retrieval.embedders.quantize import SelfAttention, swap_self_attention
from retrieval.engine import Engine
from retrieval.errors import IndexMismatchError, UsageError

MODEL = "clip:tiny-test"
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::retrieval.embedders.RandomWeightsWarning")


def engine(index: str = "default", **kwargs: object) -> Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return Engine(index, model=kwargs.pop("model", MODEL), pretrained=None, device="cpu", **kwargs)  # type: ignore[arg-type]


def near_duplicate(path, out_path) -> None:
    """The same picture as a phone's re-save would make it: smaller, a little brighter, recompressed."""
    with Image.open(path) as im:
        copy = im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BILINEAR)
    ImageEnhance.Brightness(copy).enhance(1.08).save(out_path, "JPEG", quality=70)


def test_int8_is_recorded_in_the_embedder_id_and_the_manifest(make_photos):
    paths = make_photos(3)
    with engine(precision="int8") as e:
        e.ingest(paths[0].parent)
        assert e.manifest["precision"] == "int8"
        assert e.manifest["embedder_id"] == "clip:tiny-test:random-seed0:int8"
    with engine() as e:  # no --precision: the index's own
        assert e.embedder.precision == "int8" and e.embedder.id.endswith(":int8")


def test_fp32_ids_are_unchanged_so_older_indexes_read_as_fp32(make_photos):
    paths = make_photos(2)
    with engine() as e:
        e.ingest(paths[0].parent)
        assert e.manifest["embedder_id"] == "clip:tiny-test:random-seed0"
        with e.meta.session() as s:  # as an index made before precisions were recorded
            e.meta.set_manifest(s, precision=None)
    with pytest.raises(IndexMismatchError, match="built at precision fp32, not int8"):
        engine(precision="int8")
    with engine(precision="fp32") as e:
        assert e.embedder.precision == "fp32"


def test_another_precision_on_an_existing_index_is_refused_like_another_model(make_photos):
    paths = make_photos(2)
    with engine(precision="int8") as e:
        e.ingest(paths[0].parent)
    with pytest.raises(IndexMismatchError, match="drop --precision"):
        engine(precision="fp32")
    result = runner.invoke(
        app,
        ["ingest", str(paths[0].parent), "--model", MODEL, "--pretrained", "none", "--precision", "fp32",
         "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    model_refused = runner.invoke(
        app, ["ingest", str(paths[0].parent), "--model", "classic", "--no-progress"]
    )
    assert result.exit_code == model_refused.exit_code == IndexMismatchError.exit_code
    assert len(result.output.strip().splitlines()) == 1 and "precision int8, not fp32" in result.output
    search = runner.invoke(app, ["search", "a photo", "--precision", "fp32", "--device", "cpu"])
    assert search.exit_code == IndexMismatchError.exit_code and "precision int8" in search.output


def test_int8_and_fp32_find_the_same_original_for_near_duplicates(make_photos, tmp_path):
    paths = make_photos(12)
    queries = []
    for path in paths[::2]:
        queries.append(tmp_path / f"query-{path.stem}.jpg")
        near_duplicate(path, queries[-1])
    top = {}
    for precision in ("fp32", "int8"):
        with engine(precision, precision=precision) as e:
            e.ingest(paths[0].parent)
            top[precision] = [e.search_image(q, k=1)[0].path for q in queries]
    assert top["int8"] == top["fp32"] == [str(p) for p in paths[::2]]


def test_an_fp16_index_opened_on_a_cpu_says_to_open_it_on_cuda_not_to_change_precision(make_photos):
    paths = make_photos(2)
    with engine() as e:
        e.ingest(paths[0].parent)
        with e.meta.session() as s:  # as an index ingested on CUDA at fp16 would be recorded
            e.meta.set_manifest(s, precision="fp16", embedder_id="clip:tiny-test:random-seed0:fp16")
    cuda_only = r"runs on a CUDA device \(--device cuda\) only"
    with engine() as e, pytest.raises(UsageError, match=cuda_only) as err:
        e.search_text("a photo", k=1)
    assert "use fp32" not in str(err.value)  # fp32 is refused as another precision: not a way out


def test_fp16_on_a_cpu_is_one_clear_error_line(make_photos):
    paths = make_photos(1)
    result = runner.invoke(
        app,
        ["ingest", str(paths[0].parent), "--model", MODEL, "--pretrained", "none", "--device", "cpu",
         "--precision", "fp16", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == UsageError.exit_code
    assert result.output.strip() == (
        "error: precision fp16 runs on CUDA only, not on cpu; use fp32 or int8 on a CPU"
    )


def test_an_unknown_precision_or_one_the_classic_embedder_lacks_is_refused():
    with pytest.raises(UsageError, match="choose one of: fp32, int8, fp16"):
        Engine(model=MODEL, precision="int4")
    with pytest.raises(UsageError, match="classic embedder has no model"):
        create_embedder("classic", precision="int8")


def test_the_int8_model_is_built_once_per_process_and_its_build_time_is_kept():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        first = create_embedder(MODEL, pretrained=None, device="cpu", precision="int8")
        second = create_embedder(MODEL, pretrained=None, device="cpu", precision="int8")
        plain = create_embedder(MODEL, pretrained=None, device="cpu")
    assert first._model is second._model and first._model is not plain._model
    assert first.quantize_seconds is not None and first.quantize_seconds > 0
    assert plain.quantize_seconds is None
    kinds = {type(m) for m in first._model.modules()}
    assert torch.nn.MultiheadAttention not in kinds and torch.nn.Linear not in kinds  # attention too
    assert torch.ao.nn.quantized.dynamic.Linear in kinds


def test_self_attention_computes_what_multihead_attention_does():
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.full((7, 7), float("-inf")).triu(1)  # causal, as CLIP's text tower
    rewritten = SelfAttention.from_multihead(attention)
    with torch.inference_mode():
        for m in (None, mask, mask.isinf()):
            want = attention(x, x, x, need_weights=False, attn_mask=m)[0]
            got = rewritten(x, x, x, need_weights=False, attn_mask=m)[0]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    holder = torch.nn.Sequential(attention)
    assert swap_self_attention(holder) == 1 and isinstance(holder[0], SelfAttention)


def test_int8_text_and_image_vectors_stay_close_to_fp32():
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 80, 3), dtype=np.uint8))
        for i in range(4)
    ]
    texts = ["a red square", "two dogs on a beach at dusk"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with create_embedder(MODEL, pretrained=None, device="cpu") as fp32:
            want = fp32.embed_images(images), fp32.embed_texts(texts)
        with create_embedder(MODEL, pretrained=None, device="cpu", precision="int8") as int8:
            got = int8.embed_images(images), int8.embed_texts(texts)
    for w, g in zip(want, got, strict=True):
        cosines = (w * g).sum(axis=1)
        assert cosines.min() > 0.99 and not np.allclose(w, g)  # close, and really another forward

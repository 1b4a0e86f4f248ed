"""CLIP embedders through open_clip: any `open_clip.list_pretrained()` model/tag, plus a tiny shipped config.

Weights are looked up in the local caches first and downloaded only when the network answers, so an offline
machine gets a one-line `WeightsUnavailableError` in milliseconds instead of a minute of retries.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from PIL import Image

from retrieval.embedders.base import (
    EmbedderSpec,
    PillowPreprocess,
    TorchEmbedder,
    check_weights_file,
    file_digest,
    network_reachable,
    normalize_rows,
    random_id,
    seeded_init,
    short_reason,
    torch_threads,
    weights_unavailable,
)
from retrieval.embedders.precision import Precision, precision_suffix
from retrieval.errors import UsageError

DEFAULT_MODEL = "ViT-B-32"

# A text batch of at most this many live token positions (rows x positions up to end-of-text) runs on one
# thread on a CPU: the matrices are so small that waking a second thread costs more than it saves (ViT-B-32,
# 2 cores: a 3-word query 39 ms on one thread vs 45 ms on two; 40 words, ~45 positions, even). BENCHMARKS.md,
# "Query latency".
SINGLE_THREAD_TEXT_POSITIONS = 48

# Default tag per model when a name gives none; models missing here take open_clip's first listed tag.
DEFAULT_TAGS: dict[str, str | None] = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
    "tiny-test": None,
}

# Configs shipped with retrieval (random init only): our model name -> JSON file next to this module.
LOCAL_CONFIGS: dict[str, str] = {"tiny-test": "tiny-clip.json"}

_CONFIG_DIR = Path(__file__).resolve().parent
_REGISTER_LOCK = threading.Lock()
_registered = False


def known_models() -> list[str]:
    """Models with pretrained tags in open_clip, then the shipped configs."""
    models = list(dict.fromkeys(model for model, _ in open_clip.list_pretrained()))
    return models + [name for name in LOCAL_CONFIGS if name not in models]


def pretrained_pairs() -> list[tuple[str, str]]:
    """Every (model, tag) open_clip can download."""
    return [(model, tag) for model, tag in open_clip.list_pretrained()]


def known_tags(arch: str) -> list[str]:
    return list(open_clip.list_pretrained_tags_by_model(arch))


def check_model(arch: str) -> str:
    """Return `arch` if open_clip (or our shipped configs) know it; else UsageError suggesting close names."""
    if arch in LOCAL_CONFIGS or arch in open_clip.list_models():
        return arch
    models = known_models()
    close = difflib.get_close_matches(arch, models, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(models[:12])}, ..."
    raise UsageError(f"unknown CLIP model {arch!r}; {hint} (list_embedders() has all {len(models)})")


def resolve_tag(arch: str, tag: str | None) -> str | None:
    """Canonical tag for `arch`: "default" picks from DEFAULT_TAGS, None stays None (random init)."""
    if tag is None:
        return None
    tags = known_tags(arch)
    if tag == "default":
        if arch in DEFAULT_TAGS:
            return DEFAULT_TAGS[arch]
        if not tags:
            raise UsageError(
                f"CLIP model {arch!r} has no pretrained weights in open_clip; "
                "pass --weights PATH or --pretrained none"
            )
        return tags[0]
    if arch in LOCAL_CONFIGS:
        raise UsageError(f"clip:{arch} is a test model with no pretrained weights; use --pretrained none")
    cleaned = tag.lower().replace("-", "_")
    if cleaned not in tags:
        choices = ", ".join(tags) or "(none)"
        raise UsageError(f"unknown pretrained tag {tag!r} for CLIP model {arch}; choose one of: {choices}")
    return cleaned


def _register_local_configs() -> None:
    global _registered
    with _REGISTER_LOCK:
        if not _registered:
            open_clip.add_model_config(_CONFIG_DIR)
            _registered = True


def _open_clip_name(arch: str) -> str:
    if arch in LOCAL_CONFIGS:
        _register_local_configs()
        return Path(LOCAL_CONFIGS[arch]).stem
    return arch


class ClipEmbedder(TorchEmbedder):
    """An open_clip model: image and text towers share one embedding space."""

    supports_text = True

    def __init__(
        self,
        spec: EmbedderSpec,
        *,
        weights: Path | None,
        device: str,
        batch_size: int,
        precision: Precision = "fp32",
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        name = _open_clip_name(spec.arch)
        tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained else {}

        if weights is not None:
            path = check_weights_file(weights)
            checkpoint: str | None = str(path)
            spec = replace(spec, pretrained=f"file:{file_digest(path)}")
            self.id = f"clip:{spec.arch}:{spec.pretrained}"
        elif spec.pretrained is not None:
            checkpoint = fetch_checkpoint(spec.arch, spec.pretrained, tag_cfg)
            self.id = f"clip:{spec.arch}:{spec.pretrained}"
        else:
            checkpoint = None
            self.id = random_id("clip", spec.arch)
        self.spec = spec

        try:
            with seeded_init():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name,
                    pretrained=checkpoint,
                    device="cpu",
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    image_mean=tag_cfg.get("mean"),
                    image_std=tag_cfg.get("std"),
                    image_interpolation=tag_cfg.get("interpolation"),
                    image_resize_mode=tag_cfg.get("resize_mode"),
                    pretrained_image=False,
                    pretrained_text=False,
                )
        except Exception as error:  # torch.load and load_state_dict raise many types on a garbled file
            if checkpoint is None:
                raise
            # torch's text (a paragraph on weights_only, or hundreds of key names) stays in the traceback.
            raise UsageError(
                f"cannot load {checkpoint} as clip {spec.arch} weights ({type(error).__name__}): it is not "
                f"an open_clip checkpoint of {spec.arch}"
            ) from error

        model.eval()
        self.id += precision_suffix(precision)
        if precision == "int8":
            from retrieval.embedders.quantize import dynamic_int8, quantized

            model, self.quantize_seconds = quantized(self.id, model, dynamic_int8)
        self._model = model.to(device)
        self._preprocess = PillowPreprocess.from_compose(preprocess) or preprocess
        self._name = name
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self.dim = int(open_clip.get_model_config(name)["embed_dim"])
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
        size = cfg.get("size", 224)
        self.input_size = int(max(size) if isinstance(size, tuple | list) else size)
        mode, interpolation = cfg.get("resize_mode", "shortest"), cfg.get("interpolation", "bicubic")
        resize = f"{mode}{self.input_size}:{interpolation}"
        normalise = f"mean={_numbers(cfg.get('mean', ()))}:std={_numbers(cfg.get('std', ()))}"
        self.preprocess_id = f"open_clip:{resize}:{normalise}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def _encode_images(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return cast(Any, model).encode_image(pixels)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed text queries into the same space as the images."""
        model = self._live_model()
        tokenizer = self._get_tokenizer()
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            small = self.device == "cpu" and live_positions(tokens) <= SINGLE_THREAD_TEXT_POSITIONS
            with torch.inference_mode(), torch_threads(1) if small else nullcontext(), _text_autocast(self):
                chunks.append(normalize_rows(encode_text(model, tokens)))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    def _get_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = open_clip.get_tokenizer(self._name)
                except (OSError, RuntimeError) as error:
                    raise weights_unavailable(
                        f"the tokenizer of clip {self.spec.arch}", "checkpoint", short_reason(error)
                    ) from error
            return self._tokenizer

    def close(self) -> None:
        self._tokenizer = None
        super().close()


def _text_autocast(embedder: ClipEmbedder) -> Any:
    if embedder.device.startswith("cuda") and embedder.precision == "fp16":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def live_positions(tokens: torch.Tensor) -> int:
    """Token positions a batch really computes: rows x positions up to its last end-of-text token."""
    return int(tokens.shape[0]) * (int(tokens.argmax(dim=-1).max()) + 1)


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, run only up to the batch's last end-of-text token when that cannot change
    the result.

    CLIP's text tower is causal and pools the end-of-text position (the largest token id), so the padding
    after it never reaches the output: a five-word query runs 7 of the 77 positions, a tenth of the work.
    Other text towers (custom, "eos"/"last" pooling, no causal mask) run unchanged.
    """
    if not (
        isinstance(model, open_clip.model.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    ):
        return cast(Any, model).encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def fetch_checkpoint(arch: str, tag: str, cfg: dict[str, Any] | None = None) -> str:
    """Local path of the checkpoint for `arch`/`tag`: from the caches, else downloaded if the network answers.

    Raises:
        WeightsUnavailableError: neither cached nor downloadable.
    """
    cfg = cfg if cfg is not None else open_clip.get_pretrained_cfg(arch, tag)
    what = f"clip {arch}/{tag}"
    if cfg.get("file"):
        return str(cfg["file"])
    cached = _cached_checkpoint(cfg)
    if cached is not None:
        return cached
    if cfg.get("hf_hub"):
        host = "huggingface.co"
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise weights_unavailable(what, "checkpoint")
    else:
        host = urlparse(cfg.get("url", "")).hostname or ""
    if not host or not network_reachable(host):
        raise weights_unavailable(what, "checkpoint")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as error:  # urllib, requests, httpx and huggingface_hub each raise their own
        raise weights_unavailable(what, "checkpoint", short_reason(error)) from error
    if not path:
        raise weights_unavailable(what, "checkpoint", "open_clip returned no file")
    return str(path)


def _cached_checkpoint(cfg: dict[str, Any]) -> str | None:
    """Where open_clip would have stored this checkpoint, if it is there already (no network)."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import hf_hub_download

        # open_clip's convention: "org/repo/file.bin", or "org/repo/" for its default file name
        repo_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        candidates = [*_safetensors_names(filename), filename]
        for candidate in candidates:
            try:
                return str(hf_hub_download(repo_id, candidate, local_files_only=True))
            except Exception:  # not in the cache (the exception type changed across huggingface_hub versions)
                continue
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _safetensors_names(filename: str) -> list[str]:
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{value:.3f}" for value in values)


def clip_spec(arch: str, tag: str | None) -> EmbedderSpec:
    """Validate `arch` and `tag` (or "default") and return the canonical spec."""
    arch = check_model(arch)
    return EmbedderSpec("clip", arch, resolve_tag(arch, tag))


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TAGS",
    "LOCAL_CONFIGS",
    "ClipEmbedder",
    "clip_spec",
    "encode_text",
    "fetch_checkpoint",
    "known_models",
    "pretrained_pairs",
]

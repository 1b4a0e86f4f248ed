"""torchvision ResNets as image-only embedders: the pooled penultimate feature (fc replaced by Identity).

ImageNet features find visually similar pictures well but share no space with text, so `supports_text` is
False. Weights come from torchvision's hub cache, a download when the network answers, or a local state dict.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from PIL import Image
from torchvision.models import get_model_weights
from torchvision.transforms import functional as F

from retrieval.embedders.base import (
    EmbedderSpec,
    PillowPreprocess,
    TorchEmbedder,
    check_weights_file,
    file_digest,
    network_reachable,
    random_id,
    seeded_init,
    short_reason,
    weights_unavailable,
)
from retrieval.embedders.precision import Precision, precision_suffix
from retrieval.errors import UsageError

DEFAULT_ARCH = "resnet50"

# Default weights per architecture (what torchvision calls DEFAULT, spelled out so ids are stable).
DEFAULT_TAGS: dict[str, str] = {
    "resnet18": "IMAGENET1K_V1",
    "resnet34": "IMAGENET1K_V1",
    "resnet50": "IMAGENET1K_V2",
    "resnet101": "IMAGENET1K_V2",
    "resnet152": "IMAGENET1K_V2",
}
ARCHS: tuple[str, ...] = tuple(DEFAULT_TAGS)


def known_tags(arch: str) -> list[str]:
    return [name for name in get_model_weights(arch).__members__ if name != "DEFAULT"]


def resnet_spec(arch: str, tag: str | None) -> EmbedderSpec:
    """Validate `arch` and `tag` ("default", a weights enum name, or None) and return the canonical spec."""
    arch = arch.lower()
    if arch not in DEFAULT_TAGS:
        raise UsageError(f"unknown ResNet {arch!r}; choose one of: {', '.join(ARCHS)}")
    if tag is None:
        return EmbedderSpec("resnet", arch, None)
    if tag.lower() == "default":
        return EmbedderSpec("resnet", arch, DEFAULT_TAGS[arch])
    tags = known_tags(arch)
    canonical = tag.upper()
    if canonical not in tags:
        raise UsageError(f"unknown weights {tag!r} for {arch}; choose one of: DEFAULT, {', '.join(tags)}")
    return EmbedderSpec("resnet", arch, canonical)


class ResNetEmbedder(TorchEmbedder):
    """A torchvision ResNet without its classifier; 512-d (18/34) or 2048-d (50/101/152)."""

    supports_text = False

    def __init__(
        self,
        spec: EmbedderSpec,
        *,
        weights: Path | None,
        device: str,
        batch_size: int,
        precision: Precision = "fp32",
    ) -> None:
        if precision == "int8":
            raise UsageError(
                f"{spec.name} has no int8 forward; build it at fp32"
            )  # create_embedder falls back
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        enum = get_model_weights(spec.arch)
        # Preprocessing of the named weights; random or local weights use the architecture's default recipe.
        recipe = enum[spec.pretrained or DEFAULT_TAGS[spec.arch]]

        state: dict[str, Any] | None = None
        if weights is not None:
            path = check_weights_file(weights)
            state = _load_state_dict_file(path, spec.arch)
            spec = replace(spec, pretrained=f"file:{file_digest(path)}")
            self.id = f"resnet:{spec.arch}:{spec.pretrained}"
        elif spec.pretrained is not None:
            state = fetch_state_dict(spec.arch, spec.pretrained)
            self.id = f"resnet:{spec.arch}:{spec.pretrained}"
        else:
            self.id = random_id("resnet", spec.arch)
        self.id += precision_suffix(precision)
        self.spec = spec

        with seeded_init():
            model = torchvision.models.get_model(spec.arch, weights=None)
        if state is not None:
            _apply_state_dict(model, state, weights if weights is not None else spec.pretrained)
        self.dim = int(model.fc.in_features)
        # On a CPU a ResNet-50 runs 1.25-1.6x faster (two runs) in slices of 8 images than in one batch of 32:
        # the activations of 8 stay in cache (BENCHMARKS.md, batch sweep). A GPU takes the whole batch.
        self.forward_batch = 8 if device == "cpu" else None
        model.fc = torch.nn.Identity()
        model.eval()
        self._model = model.to(device)

        self._transform = recipe.transforms()
        self.input_size = int(self._transform.resize_size[0])
        crop = int(self._transform.crop_size[0])
        interpolation = self._transform.interpolation.value
        self.preprocess_id = f"torchvision:resize{self.input_size}:{interpolation}:crop{crop}:imagenet-norm"
        # The recipe's own steps (resize, centre crop, normalise) without torch ops in the decode threads.
        t = self._transform
        self._pillow = PillowPreprocess(
            [
                partial(F.resize, size=t.resize_size, interpolation=t.interpolation, antialias=t.antialias),
                partial(F.center_crop, output_size=t.crop_size),
            ],
            t.mean,
            t.std,
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._pillow(image)


def fetch_state_dict(arch: str, tag: str) -> dict[str, Any]:
    """torchvision weights from the hub cache, else downloaded when the network answers.

    Raises:
        WeightsUnavailableError: neither cached nor downloadable.
    """
    entry = get_model_weights(arch)[tag]
    what = f"resnet {arch}/{tag}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)
    if not cached.is_file() and not network_reachable(urlparse(entry.url).hostname or ""):
        raise weights_unavailable(what, "state_dict")
    try:
        return entry.get_state_dict(progress=False, check_hash=False)
    except Exception as error:  # URLError, HTTPError, RuntimeError on a bad or partial download
        raise weights_unavailable(what, "state_dict", short_reason(error)) from error


def _load_state_dict_file(path: Path, arch: str) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch each raise their own on a garbled file
        # torch's text (a paragraph on weights_only) stays in the traceback.
        raise UsageError(
            f"cannot load {path} as {arch} weights ({type(error).__name__}): it is not a state_dict of "
            "tensors saved with torch.save"
        ) from error
    # Training scripts often wrap the weights: {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        got = type(loaded).__name__
        raise UsageError(f"cannot load {path} as {arch} weights: expected a state_dict, got {got}")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _apply_state_dict(model: torch.nn.Module, state: dict[str, Any], source: object) -> None:
    """Load everything but the classifier (absent from feature-only checkpoints; we drop it anyway)."""
    body = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as error:  # shape mismatches: weights of another architecture
        raise UsageError(
            f"cannot load {source} into this ResNet: its tensor shapes differ; is it a state_dict of the "
            "same architecture?"
        ) from error
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        sample = ", ".join((missing or unexpected)[:3])
        raise UsageError(
            f"cannot load {source} into this ResNet: {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys (e.g. {sample}); is it a state_dict of the same architecture?"
        )


__all__ = ["ARCHS", "DEFAULT_ARCH", "DEFAULT_TAGS", "ResNetEmbedder", "fetch_state_dict", "resnet_spec"]

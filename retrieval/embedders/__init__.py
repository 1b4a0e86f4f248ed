"""Embedders turn images (and, for CLIP, texts) into unit vectors; this module is their one entry point.

    parse_embedder_name("clip:ViT-B-32/laion2b_s34b_b79k")  -> EmbedderSpec, pure, raises UsageError
    list_embedders()                                       -> every accepted name
    create_embedder("resnet50", pretrained=None)          -> an Embedder (use it as a context manager)
    create_embedder("clip", precision="int8")             -> the same model with an int8 CPU forward

Names: "classic" (its current version; "classic:v1" for indexes built before v2); "clip"
(ViT-B-32/laion2b_s34b_b79k), "clip:MODEL", "clip:MODEL/TAG" for any open_clip pretrained pair,
"clip:tiny-test" (a tiny random model for tests); "resnet18".."resnet152" or "resnet:ARCH[/WEIGHTS]".
The CLIP and ResNet families load lazily, so "classic" never imports open_clip.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from retrieval.embedders.base import (
    Embedder,
    EmbedderSpec,
    PrecisionFallbackWarning,
    RandomWeightsWarning,
    SupersededEmbedderWarning,
    resolve_device,
    warn_random_weights,
)
from retrieval.embedders.classic import VERSION as CLASSIC_VERSION
from retrieval.embedders.classic import VERSIONS as CLASSIC_VERSIONS
from retrieval.embedders.classic import ClassicEmbedder
from retrieval.embedders.precision import PRECISIONS, Precision, check_precision, effective_precision
from retrieval.errors import UsageError

FAMILIES: tuple[str, ...] = ("classic", "clip", "resnet")
_RESNET_SHORT_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_NAME_CHOICES = (
    "classic, clip, clip:MODEL[/TAG] (e.g. clip:ViT-B-32/laion2b_s34b_b79k), clip:tiny-test, "
    + ", ".join(_RESNET_SHORT_NAMES)
    + ", resnet:ARCH[/WEIGHTS]"
)


def parse_embedder_name(name: str, pretrained: str | None = "default") -> EmbedderSpec:
    """Turn a user-facing name (+ the --pretrained value) into a canonical spec, loading nothing.

    `pretrained`: "default" (the model's usual weights), a tag, or None / "none" for random weights. A tag in
    the name ("clip:ViT-B-32/openai") wins over "default" and must agree with any other value.

    Raises:
        UsageError: naming the bad value and listing the choices.
    """
    text = name.strip()
    family, has_colon, rest = text.partition(":")
    family = family.lower()
    if family in _RESNET_SHORT_NAMES and not has_colon:
        family, rest = "resnet", family
    arch, has_slash, named_tag = rest.partition("/")
    arch = arch.strip()

    wanted = _pretrained_choice(pretrained)
    if has_slash:
        if not named_tag.strip():
            raise UsageError(f"embedder name {name!r} ends with '/' but names no pretrained tag")
        in_name = _pretrained_choice(named_tag)
        if wanted != "default" and _tag_key(wanted) != _tag_key(in_name):
            raise UsageError(
                f"embedder name {name!r} asks for weights {named_tag!r} but --pretrained says "
                f"{pretrained!r}; give only one"
            )
        wanted = in_name

    if family == "classic":
        if arch and arch not in CLASSIC_VERSIONS:
            versions = ", ".join(f"classic:{v}" for v in CLASSIC_VERSIONS)
            raise UsageError(
                f"unknown classic embedder version {arch!r}; choose classic or one of {versions}"
            )
        if wanted not in ("default", None):
            raise UsageError(f"the classic embedder has no weights, so --pretrained {wanted!r} means nothing")
        return EmbedderSpec("classic", arch or CLASSIC_VERSION, None)
    if family == "clip":
        from retrieval.embedders.clip import DEFAULT_MODEL, clip_spec

        return clip_spec(arch or DEFAULT_MODEL, wanted)
    if family == "resnet":
        from retrieval.embedders.resnet import DEFAULT_ARCH, resnet_spec

        return resnet_spec(arch or DEFAULT_ARCH, wanted)
    raise UsageError(f"unknown embedder {name!r}; choose one of: {_NAME_CHOICES}")


def list_embedders() -> list[str]:
    """Every name `create_embedder` accepts in its full form (CLIP: one per open_clip pretrained pair)."""
    from retrieval.embedders.clip import LOCAL_CONFIGS, pretrained_pairs

    return [
        "classic",
        *(f"classic:{version}" for version in CLASSIC_VERSIONS),
        "clip",
        *(f"clip:{model}/{tag}" for model, tag in pretrained_pairs()),
        *(f"clip:{model}" for model in LOCAL_CONFIGS),
        *_RESNET_SHORT_NAMES,
    ]


def create_embedder(
    name: str,
    *,
    pretrained: str | None = "default",
    weights: Path | str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    precision: str | None = None,
) -> Embedder:
    """Build the embedder `name` with its weights loaded, ready to embed.

    Args:
        name: see the module docstring; `list_embedders()` lists them.
        pretrained: "default", a tag, or None / "none" for seeded random weights (warns RandomWeightsWarning).
        weights: a local open_clip checkpoint or torchvision state_dict, used instead of downloading; its
            content hash goes into the embedder's `id`.
        device: "auto" (cuda if available), "cpu" or "cuda".
        batch_size: images (or texts) per forward pass.
        precision: "fp32", "int8" (CPU: an int8 forward, built once per process) or "fp16" (CUDA); None is
            `DEFAULT_PRECISION`. Anything but fp32 is part of the embedder's `id`.

    Raises:
        UsageError: bad name, tag, device, precision (fp16 off CUDA, int8 on it) or weights file.
        WeightsUnavailableError: the weights are neither cached nor downloadable.
    """
    spec = parse_embedder_name(name, pretrained)
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    weights_path = Path(weights).expanduser() if weights is not None else None
    if spec.family == "classic":
        if weights_path is not None:
            raise UsageError("the classic embedder has no weights; drop --weights")
        if precision is not None and precision.strip().lower() != "fp32":
            raise UsageError(f"the classic embedder has no model to run at {precision}; drop --precision")
        return ClassicEmbedder(version=spec.arch, batch_size=batch_size)
    resolved = resolve_device(device)
    wanted = check_precision(precision, resolved)
    runs = effective_precision(spec.family, wanted)
    if runs != wanted:
        warnings.warn(
            PrecisionFallbackWarning(
                f"{spec.name} has no {wanted} forward (torch's dynamic int8 does not cover convolutions); "
                f"it runs at {runs}"
            ),
            stacklevel=2,
        )
    embedder = _CREATORS[spec.family](spec, weights_path, resolved, batch_size, runs)
    if embedder.spec.random_weights:
        warn_random_weights(embedder.id)
    return embedder


def _create_clip(
    spec: EmbedderSpec, weights: Path | None, device: str, batch_size: int, precision: Precision
) -> Embedder:
    from retrieval.embedders.clip import ClipEmbedder

    return ClipEmbedder(spec, weights=weights, device=device, batch_size=batch_size, precision=precision)


def _create_resnet(
    spec: EmbedderSpec, weights: Path | None, device: str, batch_size: int, precision: Precision
) -> Embedder:
    from retrieval.embedders.resnet import ResNetEmbedder

    return ResNetEmbedder(spec, weights=weights, device=device, batch_size=batch_size, precision=precision)


_CREATORS: dict[str, Callable[[EmbedderSpec, Path | None, str, int, Precision], Embedder]] = {
    "clip": _create_clip,
    "resnet": _create_resnet,
}


def _pretrained_choice(value: str | None) -> str | None:
    """None and "none" mean random weights; "" and "default" mean the model's usual weights."""
    if value is None or value.strip().lower() == "none":
        return None
    text = value.strip()
    return "default" if text.lower() in ("", "default") else text


def _tag_key(tag: str | None) -> str | None:
    return None if tag is None else tag.lower().replace("-", "_")


__all__ = [
    "FAMILIES",
    "PRECISIONS",
    "Embedder",
    "EmbedderSpec",
    "Precision",
    "PrecisionFallbackWarning",
    "RandomWeightsWarning",
    "SupersededEmbedderWarning",
    "create_embedder",
    "list_embedders",
    "parse_embedder_name",
]

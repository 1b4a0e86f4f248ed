"""What every embedder is: the `Embedder` interface, its `EmbedderSpec`, and helpers the families share.

An embedder turns decoded images (and, for CLIP, texts) into L2-normalised float32 vectors. Its `id` and
`preprocess_id` go into an index manifest, so two embedders with the same `id` must produce the same vectors;
that is why random initialisation is seeded and local weight files are named by their content hash.

torch is imported inside the functions that run a model, so the classic embedder (and every command that
does not embed) starts without it (BENCHMARKS.md, "CLI start").
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from retrieval.errors import QueryError, UsageError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

RANDOM_SEED = 0
DIGEST_CHARS = 16  # hex characters of a weights file's sha256 kept in its id
_PROBE_TIMEOUT_S = 3.0


class RandomWeightsWarning(UserWarning):
    """An embedder runs on random weights: its vectors only exercise the plumbing, they mean nothing."""


class PrecisionFallbackWarning(UserWarning):
    """An embedder was asked for a precision it has no forward for and runs at another (a ResNet at int8)."""


class SupersededEmbedderWarning(UserWarning):
    """An index was built by an older version of its embedder: it still works, a new index would do better."""


@dataclass(frozen=True)
class EmbedderSpec:
    """Which model, as parsed from a name: `pretrained` is a canonical tag, "file:<sha>", or None (random)."""

    family: str
    arch: str
    pretrained: str | None

    @property
    def name(self) -> str:
        """The name `parse_embedder_name` turns back into this spec (weights files aside)."""
        if self.family == "classic":
            return f"classic:{self.arch}"
        if self.pretrained is None or self.pretrained.startswith("file:"):
            return f"{self.family}:{self.arch}"
        return f"{self.family}:{self.arch}/{self.pretrained}"

    @property
    def random_weights(self) -> bool:
        """A learnt model left at its seeded random init: its vectors mean nothing (the classic embedder has
        no weights at all)."""
        return self.family != "classic" and self.pretrained is None


class Embedder(ABC):
    """Images (and maybe texts) in, (n, dim) float32 unit vectors out.

    `preprocess` runs on CPU and is thread-safe, so ingest calls it from its decode workers;
    `embed_preprocessed` runs the model on a batch of its results. Use as a context manager (or call `close`)
    to free the model.
    """

    spec: EmbedderSpec
    id: str
    dim: int
    input_size: int
    supports_text: bool = False
    preprocess_id: str
    device: str = "cpu"
    batch_size: int = 32
    #: `preprocess` takes a transparent picture as RGBA (decode with keep_alpha) and flattens it itself.
    keeps_alpha: bool = False
    #: Set on an embedder kept only so that old indexes still open: what a new index would gain.
    superseded: str | None = None
    #: Arithmetic of the forward (retrieval/embedders/precision.py); part of `id` unless "fp32".
    precision: str = "fp32"
    #: Seconds this process took to build the quantised model (None: not quantised, or built earlier).
    quantize_seconds: float | None = None

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray | torch.Tensor:
        """Turn one RGB image (RGBA too, with `keeps_alpha`) into what `embed_preprocessed` stacks."""

    @abstractmethod
    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        """Embed outputs of `preprocess`; returns (len(batch), dim) float32, rows of unit length."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess and embed images in batches of `batch_size`."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            chunks.append(self.embed_preprocessed([self.preprocess(image) for image in chunk]))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed text queries; only embedders with `supports_text` can."""
        raise QueryError(
            f"this index uses {self.spec.arch if self.spec.family != 'classic' else 'classic'}, "
            "which has no text encoder; search by --image"
        )

    def close(self) -> None:  # noqa: B027 - weight-free embedders have nothing to free
        """Free the model; the embedder cannot be used afterwards."""

    def unprojected(self) -> Embedder:
        """The model itself, without any projection applied after it (see `ProjectedEmbedder`)."""
        return self

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """What this embedder applies after `unprojected()`'s vectors: nothing, unless it is projected."""
        return vectors

    def __enter__(self) -> Embedder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} dim={self.dim} device={self.device}>"


class TorchEmbedder(Embedder):
    """Shared batching for embedders backed by a torch image model; subclasses set `_model` and `_encode`."""

    _model: torch.nn.Module | None = None
    #: Most images one forward pass takes; larger batches are run in slices of this size (None: all at once).
    forward_batch: int | None = None

    def _live_model(self) -> torch.nn.Module:
        if self._model is None:
            raise UsageError(f"embedder {self.id} is closed; create a new one")
        return self._model

    def _encode_images(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model(pixels)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        import torch

        model = self._live_model()
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = torch.stack([torch.as_tensor(item) for item in batch])
        if self.device.startswith("cuda"):
            # Page-locked memory lets the copy run as DMA; fp16 compute comes from _autocast.
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        step = self.forward_batch or len(pixels)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            slices = [self._encode_images(model, pixels[i : i + step]) for i in range(0, len(pixels), step)]
            features = torch.cat(slices)
        return normalize_rows(features)

    def close(self) -> None:
        self._model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


class PillowPreprocess:
    """A model's image transform run as its Pillow steps (resize, crop) plus a numpy normalisation.

    Ingest calls `preprocess` from its decode threads. A torch op there (ToTensor, Normalize on a 224x224
    image) would start an OpenMP team per calling thread that fights the model's own threads for the cores;
    numpy and Pillow do the same arithmetic on one thread and release the GIL. The result equals the
    torchvision transform's to float32 rounding (tests/test_pipeline.py checks it).
    """

    def __init__(self, steps: Sequence[Callable[[Image.Image], Image.Image]], mean: Any, std: Any) -> None:
        self.steps = list(steps)
        mean64, std64 = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        self._scale = (1.0 / (255.0 * std64)).astype(np.float32)
        self._offset = (-mean64 / std64).astype(np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        for step in self.steps:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.float32)
        pixels *= self._scale
        pixels += self._offset
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    @classmethod
    def from_compose(cls, transform: Any) -> PillowPreprocess | None:
        """Split a torchvision Compose of Pillow steps + ToTensor + Normalize; None for any other shape."""
        from torchvision import transforms

        steps = list(getattr(transform, "transforms", ()))
        for i, step in enumerate(steps):
            if isinstance(step, transforms.ToTensor):
                rest = steps[i + 1 :]
                if len(rest) == 1 and isinstance(rest[0], transforms.Normalize):
                    return cls(steps[:i], rest[0].mean, rest[0].std)
                return None
            if isinstance(step, transforms.Normalize | transforms.ConvertImageDtype | transforms.PILToTensor):
                return None
        return None


def _autocast(device: str, precision: str) -> AbstractContextManager[Any]:
    """Mixed fp16 on a GPU when the precision is fp16 (CLIP and ResNet are trained for it); else as built."""
    if device.startswith("cuda") and precision == "fp16":
        import torch

        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def normalize_rows(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return float32 rows of unit L2 norm (all-zero rows stay zero rather than becoming NaN)."""
    if not isinstance(features, np.ndarray) and hasattr(features, "detach"):  # a torch tensor
        features = features.detach().float().cpu().numpy()
    array = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, np.float32(1e-12))


def resolve_device(device: str) -> str:
    """Resolve "auto" to cuda when available, else cpu; asking for cuda without one is a usage error."""
    wanted = device.strip().lower()
    if wanted == "cpu":
        return "cpu"
    if wanted != "auto" and not wanted.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}; choose auto, cpu or cuda")
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but no CUDA device is available; use cpu")
    return wanted


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block on `count` intra-op threads, then restore the process's setting (a global one: callers
    that share the model serialise, as the engine does)."""
    import torch

    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def seeded_init(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Make random initialisation reproducible across processes without disturbing the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def random_id(family: str, arch: str) -> str:
    return f"{family}:{arch}:random-seed{RANDOM_SEED}"


def warn_random_weights(embedder_id: str) -> None:
    warnings.warn(
        RandomWeightsWarning(
            f"{embedder_id} uses RANDOM weights: its embeddings have no semantic meaning "
            "(fine for tests and plumbing, useless for real search)"
        ),
        stacklevel=3,
    )


def file_digest(path: Path) -> str:
    """Short sha256 of a weights file, so an index records which checkpoint built it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]


# First bytes of files people pass as --weights by mistake, named in the refusal.
_NOT_CHECKPOINTS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
)


def check_weights_file(path: Path) -> Path:
    """Refuse a weights path that is not a readable checkpoint file, naming it, before torch sees it.

    A checkpoint is a zip (what `torch.save` writes), a pickle (older `torch.save`) or safetensors; anything
    else is refused here in words, because torch's own message for it is a paragraph about `weights_only`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"weights file {path} is not readable")
    with path.open("rb") as handle:
        head = handle.read(16)
    if not _looks_like_checkpoint(head):
        what = next((name for magic, name in _NOT_CHECKPOINTS if head.startswith(magic)), None)
        what = what or "neither a torch.save file nor safetensors"
        raise UsageError(
            f"weights file {path} is not a checkpoint ({what}); "
            "pass a .pt/.pth/.bin/.safetensors file of model weights"
        )
    return path


def _looks_like_checkpoint(head: bytes) -> bool:
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle (legacy torch.save)
        return True
    # safetensors: an 8-byte little-endian header length, then the JSON header
    return len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def network_reachable(host: str) -> bool:
    """Cheap check before a download: libraries retry for a minute when there is no network at all."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what a direct socket cannot; let the download try
    try:
        with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def weights_unavailable(what: str, kind: str, detail: str | None = None) -> WeightsUnavailableError:
    """The one-line error for weights that are neither cached nor downloadable."""
    cause = "no network" if detail is None else f"the download failed ({detail})"
    return WeightsUnavailableError(
        f"no cached weights for {what} and {cause}; pass --weights PATH (a local {kind}) "
        "or --pretrained none for random weights (testing only)"
    )


def short_reason(error: BaseException, limit: int = 120) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

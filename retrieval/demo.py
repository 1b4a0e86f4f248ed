"""The demo: index a folder of sample photos and query it, saying plainly what ran on which model."""

from __future__ import annotations

import shlex
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from retrieval.embedders import RandomWeightsWarning, create_embedder
from retrieval.engine import Engine
from retrieval.errors import UsageError, WeightsUnavailableError
from retrieval.files.decoding import SUPPORTED_EXTENSIONS
from retrieval.maps.layout import MIN_POINTS
from retrieval.search.queries import Query, SearchHit
from retrieval.settings import default_home, resolve_home

# scikit-image ships these photographs (and a few test patterns) with its wheel: no network needed.
SAMPLE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "horse.png",
    "ihc.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "page.png",
    "text.png",
    "clock_motion.png",
    "color.png",
    "logo.png",
    "cell.png",
    "microaneurysms.png",
    "chessboard_RGB.png",
)


def sample_photos_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:
        raise UsageError(
            "the demo's sample photos come from scikit-image: pip install scikit-image, or pass --photos DIR"
        ) from exc
    return Path(skimage.data.data_dir)


def _copy_samples(dest: Path) -> Path:
    src = sample_photos_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        if (src / name).is_file() and not (dest / name).exists():
            shutil.copy2(src / name, dest / name)
    return dest


def _table(hits: list[SearchHit]) -> list[str]:
    return [f"  {h.rank:>2}  {h.score:.3f}  {Path(h.path).name}" for h in hits]


def next_commands(home: Path, index: str, photo: Path, *, text: bool) -> list[str]:
    """The commands to try on the demo's index, with its --home (unless it is the default) and --index."""
    where = [] if home == default_home() else ["--home", str(home)]
    where += [] if index == "default" else ["--index", index]

    def command(*words: str) -> str:
        return "  " + shlex.join(["retrieval", *words, *where])

    lines = ["next, try:"]
    if text:
        lines.append(command("search", "a cat"))
    lines.append(command("search", "--image", str(photo)))
    lines.append(command("map", "--similar", str(photo), "--out", str(home / f"{index}-map.html")))
    lines.append(command("serve") + "    # then open http://127.0.0.1:8000/")
    return lines


def run_demo(
    *,
    home: Path | str | None = None,
    index: str = "demo",
    photos: Path | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Build `index` from the photos, then run an image query, a more-like-this and a text query."""
    home = resolve_home(home)
    folder = Path(photos).expanduser().resolve() if photos else _copy_samples(home / f"{index}-photos")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not images:
        raise UsageError(f"no images in {folder}")
    say(f"photos: {len(images)} images in {folder}")

    model = "clip"
    try:
        create_embedder(model, device="cpu").close()
    except WeightsUnavailableError as exc:
        say(
            f"CLIP weights unavailable ({exc}); using the classic embedder, which needs no weights "
            "and has no text search"
        )
        model = "classic"

    with Engine(index, home=home, model=model, device="auto") as engine:
        report = engine.ingest(folder)
        say(
            f"index {index!r} ({engine.manifest['embedder_id']}): "
            f"{report.added} added, {report.updated} updated, "
            f"{report.removed} removed, {report.unchanged} unchanged, {len(report.failed)} failed"
        )

        by_name = {p.name: p for p in images}
        query_src = by_name.get("chelsea.png", images[0])  # the cat: a photo, not a texture
        query_dir = home / f"{index}-queries"
        query_dir.mkdir(parents=True, exist_ok=True)
        query_img = query_dir / f"{query_src.stem}-small.jpg"
        with Image.open(query_src) as opened:
            im = opened.convert("RGB")
            w, h = im.size
            im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).resize((w // 2, h // 2)).save(
                query_img, quality=70
            )
        say(f"image query: {query_img.name} (a cropped, half-size, re-compressed copy of {query_src.name})")
        for line in _table(engine.search_image(query_img, k=5)):
            say(line)

        first = engine.similar(query_src, k=3)
        say(f"more like {query_src.name}:")
        for line in _table(first):
            say(line)

        if len(images) >= MIN_POINTS:
            m = engine.map(Query.of(engine.resolve_image_ref(query_src)), n=len(images) - 1)
            drawn = engine.render_map(m, home / f"{index}-map.png")
            say(
                f"map of the collection around {query_src.name}: {drawn.path} "
                f"(t-SNE, trustworthiness {m.trustworthiness:.2f})"
            )

        if model != "classic":
            say('text query: "a cat"')
            for line in _table(engine.search_text("a cat", k=5)):
                say(line)
            for line in next_commands(home, index, query_src, text=True):
                say(line)
            return

    # Offline: show that the text path works end to end, on a random-weight model, and say so.
    say("text query on a random-weight tiny CLIP (plumbing only: these scores carry no meaning)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with Engine(f"{index}-random-clip", home=home, model="clip:tiny-test", pretrained=None) as engine:
            engine.ingest(folder)
            for line in _table(engine.search_text("a cat", k=3)):
                say(line)
    for line in next_commands(home, index, query_src, text=False):
        say(line)

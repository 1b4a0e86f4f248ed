"""t-SNE maps: layout quality on separated groups, clusters, PNG/SVG/HTML rendering, thumbnail cache, CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from retrieval_cli.main import app
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import QueryError, UsageError
from retrieval.files.decoding import ALPHA_BACKGROUND
from retrieval.files.thumbnails import SIDES, make_thumbnail, thumbnail_cache, thumbnails_of
from retrieval.maps import layout as maps
from retrieval.maps.layout import (
    LargeMapWarning,
    LayoutParams,
    MapPoint,
    MapProgress,
    NeighbourhoodMap,
    choose_perplexity,
    cluster_points,
    compute_layout,
)
from retrieval.maps.render import fill_template, render_html, script_json
from retrieval.search.queries import Query, QueryPart

GROUPS = 3
PER_GROUP = 12
runner = CliRunner()


def separated_groups(groups: int = 4, per_group: int = 15, dim: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)) * 4
    labels = np.repeat(np.arange(groups), per_group)
    return centres[labels] + rng.standard_normal((len(labels), dim)), labels


def intra_inter(coords: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean 2-D distance between points of the same group, and between points of different groups."""
    d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(d[same & off_diagonal].mean()), float(d[~same].mean())


# -- layout and clusters on plain arrays --------------------------------------------------------------


def test_a_transparent_picture_has_its_thumbnail_on_the_same_mid_grey_as_the_embedders() -> None:
    art = Image.new("RGBA", (200, 100), (255, 255, 255, 0))
    ImageDraw.Draw(art).rectangle((150, 0, 199, 99), fill=(200, 30, 30, 255))
    buf = io.BytesIO()
    art.save(buf, "PNG")
    thumb = Image.open(io.BytesIO(make_thumbnail(buf.getvalue())))
    corner = np.asarray(thumb.convert("RGB"), dtype=int)[10, 10]
    assert np.abs(corner - np.array(ALPHA_BACKGROUND)).max() <= 3  # JPEG; on white it was (255, 255, 255)


def test_perplexity_grows_with_n_within_5_to_50_and_stays_well_below_n():
    assert choose_perplexity(5) < 5 / 3
    assert choose_perplexity(40) == 5
    assert choose_perplexity(200) == 20
    assert choose_perplexity(500) == choose_perplexity(3000) == 30
    assert choose_perplexity(5000) == 50
    for n in range(5, 3000, 37):
        assert choose_perplexity(n) < n / 3


def test_layout_puts_same_group_points_closer_than_other_group_points_and_is_trustworthy():
    vectors, labels = separated_groups()
    layout = compute_layout(vectors, seed=3)
    intra, inter = intra_inter(layout.coords, labels)
    assert intra < 0.3 * inter
    assert layout.trustworthiness > 0.9
    assert layout.params.perplexity == choose_perplexity(len(vectors))
    assert layout.params.pca_dims == 50 and layout.params.init == "pca"


def test_layout_is_the_same_for_the_same_seed():
    vectors, _ = separated_groups(groups=2, per_group=10)
    a = compute_layout(vectors, seed=7).coords
    b = compute_layout(vectors, seed=7).coords
    np.testing.assert_array_equal(a, b)


def test_fewer_than_five_points_is_a_clear_error():
    with pytest.raises(QueryError, match="at least 5 points"):
        compute_layout(np.eye(4, 16))


def test_perplexity_must_be_below_the_number_of_points():
    vectors, _ = separated_groups(groups=2, per_group=5)
    with pytest.raises(UsageError, match="perplexity"):
        compute_layout(vectors, perplexity=10)


def test_large_maps_warn_and_huge_maps_are_refused(monkeypatch):
    vectors, _ = separated_groups(groups=2, per_group=6)
    monkeypatch.setattr(maps, "WARN_POINTS", 10)
    with pytest.warns(LargeMapWarning, match="12 points"):
        compute_layout(vectors)
    monkeypatch.setattr(maps, "MAX_POINTS", 11)
    with pytest.raises(UsageError, match="12 points"):
        compute_layout(vectors)


def test_kmeans_with_chosen_k_finds_the_groups():
    vectors, labels = separated_groups(groups=4, per_group=12)
    found = cluster_points(vectors)
    assert found.k == 4 and found.chosen
    pairs = {(int(a), int(b)) for a, b in zip(labels, found.labels, strict=True)}
    assert len(pairs) == 4  # one found cluster per group


def test_kmeans_with_given_k_is_used_as_given():
    vectors, _ = separated_groups(groups=4, per_group=12)
    found = cluster_points(vectors, k=2)
    assert found.k == 2 and not found.chosen and set(found.labels) == {0, 1}
    with pytest.raises(UsageError, match="clusters"):
        cluster_points(vectors, k=0)


# -- end to end on an index of drawn photos -----------------------------------------------------------


def _variant(base: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The same scene, slightly lighter or darker, cropped a little and re-noised."""
    w, h = base.size
    dx, dy = (int(v) for v in rng.integers(0, 8, 2))
    im = base.crop((dx, dy, w - 8 + dx, h - 8 + dy)).resize((w, h))
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.85, 1.15)))
    noisy = np.asarray(im, dtype=np.float64) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Iterator[tuple[Engine, dict[str, int]]]:
    """An index of GROUPS x PER_GROUP photos, each group variants of one drawn scene; path -> group."""
    root = tmp_path_factory.mktemp("maps")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    group_of: dict[str, int] = {}
    for g in range(GROUPS):
        base = draw_photo(100 + g, size=(128, 96))
        for i in range(PER_GROUP):
            path = photos / f"g{g}-{i}.jpg"
            _variant(base, rng).save(path, quality=90)
            group_of[str(path)] = g
    with Engine("maps", home=root / "home", model="classic") as engine:
        engine.ingest(photos, thumbnails=False)  # the maps make their own: the path tested here
        yield engine, group_of


def _first_id(engine: Engine, name: str) -> int:
    """The id of photo `name` (e.g. "g1-0") of the grouped index."""
    content_id = engine.meta.content_id_for_path(engine.dir.parent.parent / "photos" / f"{name}.jpg")
    assert content_id is not None
    return content_id


def test_small_maps_get_more_iterations_than_large_ones() -> None:
    assert maps.choose_iterations(35) == maps.SMALL_MAP_ITER > maps.choose_iterations(1000)


def test_map_of_grouped_photos_keeps_groups_apart_and_places_the_query(grouped):
    engine, group_of = grouped
    query_id = _first_id(engine, "g1-0")
    m = engine.map(Query.of(QueryPart("id", query_id)), n=GROUPS * PER_GROUP - 1, seed=0)
    assert m.n_results == GROUPS * PER_GROUP - 1 and m.n_context == 0
    query = m.points[0]
    assert query.role == "query" and query.id == query_id and query.path.endswith("g1-0.jpg")
    results = [p for p in m.points if p.role == "result"]
    coords = np.array([(p.x, p.y) for p in results])
    labels = np.array([group_of[p.path] for p in results])
    intra, inter = intra_inter(coords, labels)
    assert intra < 0.5 * inter
    assert m.trustworthiness > 0.9
    assert m.title == "more like g1-0.jpg"
    # The query sits among its own group.
    own = coords[labels == 1].mean(axis=0)
    others = [coords[labels == g].mean(axis=0) for g in (0, 2)]
    q = np.array([query.x, query.y])
    assert np.linalg.norm(q - own) < min(np.linalg.norm(q - c) for c in others)


def test_expand_adds_each_results_neighbours_once(grouped):
    engine, _ = grouped
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g0-0"))), n=4, expand=6)
    results = {p.id for p in m.points if p.role == "result"}
    context = [p.id for p in m.points if p.role == "context"]
    assert len(results) == 4 and context
    assert len(set(context)) == len(context) and not set(context) & results
    assert m.points[0].id not in context


def test_png_map_opens_at_the_expected_size_and_thumbnails_are_made_once(grouped, tmp_path):
    engine, _ = grouped
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g2-3"))), n=12)
    first = engine.render_map(m, tmp_path / "map.png")
    with Image.open(first.path) as im:
        assert im.format == "PNG" and im.size == (1600, 1200)
        colours = len(im.convert("RGB").getcolors(1 << 24))
    assert colours > 2000  # photographs were drawn, not only dots
    assert first.thumbnails_made == 13  # the 12 results and the query image
    assert len(list((engine.dir / "thumbs").glob("*.jpg"))) >= 13
    again = engine.render_map(m, tmp_path / "again.html", colour_by="score")
    assert again.thumbnails_made == 0


def test_a_map_tells_its_stages_in_order_layout_thumbnails_drawing(grouped, tmp_path):
    engine, _ = grouped
    seen: list[MapProgress] = []
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g0-5"))), n=8, progress=seen.append)
    engine.render_map(m, tmp_path / "stages.png", progress=seen.append)
    stages = [p.stage for p in seen]
    assert stages[0] == "layout" and stages[-1] == "drawing"
    assert stages == sorted(stages, key=["layout", "thumbnails", "drawing"].index)
    thumbs = [p for p in seen if p.stage == "thumbnails"]
    assert thumbs[0].total == len(m.points)
    done = [p.done for p in thumbs[1:]]
    assert done == sorted(done) and done[-1] == thumbs[-1].total  # the ones still to make, counted up


# -- thumbnails made during ingest ---------------------------------------------------------------------


def no_photo_decoded(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """From now on, every decode a thumbnail request makes from a photo, recorded (and refused)."""
    import retrieval.files.thumbnails as thumbnails

    calls: list[object] = []

    def refuse(source: object, **kwargs: object) -> None:
        calls.append(source)
        raise AssertionError(f"decoded {source} again for a thumbnail")

    monkeypatch.setattr(thumbnails, "decode_image", refuse)
    return calls


def test_ingest_makes_the_thumbnails_maps_and_the_web_page_ask_for_and_none_is_decoded_again(
    make_photos, home, tmp_path, monkeypatch
):
    paths = make_photos(6, fmt="PNG")  # 192x144
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        ids = sorted(engine.meta.embedded_ids())
        hashes = engine.meta.content_hashes(ids)
        for side in SIDES:
            cache = thumbnail_cache(engine.dir / "thumbs", side)
            assert all(cache.path_for(i, hashes[i]).is_file() for i in ids), side
        calls = no_photo_decoded(monkeypatch)
        small, _ = engine.thumbnail(ids[0], 96)  # what /api/images/ID/thumbnail?size=small serves
        large, _ = engine.thumbnail(ids[0], 256)  # ... and size=large
        m = engine.map(Query.of(QueryPart("id", ids[0])), n=5)
        rendered = engine.render_map(m, tmp_path / "map.png")
    assert calls == [] and rendered.thumbnails_made == 0
    assert small is not None and Image.open(io.BytesIO(small)).size == (96, 72)
    assert large is not None and Image.open(io.BytesIO(large)).size == (192, 144)  # never enlarged


def test_a_side_the_model_decoded_too_small_for_is_made_from_the_photo_on_request(make_photos, home):
    paths = make_photos(1, fmt="JPEG")
    draw_photo(7, (640, 480)).save(paths[0], quality=90)  # classic decodes it at 1/4 scale: 160x120
    with Engine(model="classic") as engine:
        engine.ingest(paths[0].parent)
        (content_id,) = engine.meta.embedded_ids()
        digest = engine.meta.content_hashes([content_id])[content_id]
        small = thumbnail_cache(engine.dir / "thumbs", 96).path_for(content_id, digest)
        large = thumbnail_cache(engine.dir / "thumbs", 256).path_for(content_id, digest)
        assert small.is_file() and not large.exists()
        data, _ = engine.thumbnail(content_id, 256)
    assert data is not None and Image.open(io.BytesIO(data)).size == (256, 192)
    assert large.is_file()


def test_thumbnails_of_a_decoded_picture_flatten_transparency_and_leave_the_picture_whole():
    art = Image.new("RGBA", (400, 300), (255, 255, 255, 0))
    ImageDraw.Draw(art).ellipse((100, 50, 300, 250), fill=(200, 30, 30, 255))
    made = thumbnails_of(art, SIDES)
    assert art.size == (400, 300) and art.mode == "RGBA"
    assert {side: Image.open(io.BytesIO(data)).size for side, data in made.items()} == {
        96: (96, 72),
        256: (256, 192),
    }
    corner = np.asarray(Image.open(io.BytesIO(made[256])).convert("RGB"), dtype=int)[5, 5]
    assert np.abs(corner - np.array(ALPHA_BACKGROUND)).max() <= 3


def test_svg_map_is_written(grouped, tmp_path):
    engine, _ = grouped
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g0-1"))), n=8)
    out = engine.render_map(m, tmp_path / "map.svg").path
    assert out.read_text().lstrip().startswith("<?xml") and "<image" in out.read_text()


def _html_data(page: str) -> dict:
    return json.loads(
        re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S)[1]
    )


def test_html_map_stands_alone_with_every_point_and_no_external_url(grouped, tmp_path):
    engine, _ = grouped
    m: NeighbourhoodMap = engine.map(Query.of(QueryPart("id", _first_id(engine, "g1-2"))), n=10, expand=2)
    page = engine.render_map(m, tmp_path / "map.html").path.read_text()
    # No http(s) or protocol-relative URL, no linked script, picture, style sheet or font.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", page) and "@import" not in page
    data = _html_data(page)
    assert len(data["points"]) == len(m.points)
    assert [p["path"] for p in data["points"]] == [p.path for p in m.points]
    # every picture embedded, the query's too
    assert all(p["thumbnail"].startswith("data:image/jpeg;base64,") for p in data["points"])


def synthetic_map(coords, paths=None, title: str = "a test") -> NeighbourhoodMap:
    """A map of the given 2-D points, the first the query, without any index behind it."""
    paths = paths or [f"/photos/p{i}.jpg" for i in range(len(coords))]
    points = tuple(
        MapPoint(
            role="query" if i == 0 else "result",
            id=i + 1,
            path=path,
            x=float(x),
            y=float(y),
            score=1.0 if i == 0 else 1 - i / len(coords),
            rank=None if i == 0 else i,
            cluster=-1 if i == 0 else i % 2,
        )
        for i, ((x, y), path) in enumerate(zip(coords, paths, strict=True))
    )
    params = LayoutParams(perplexity=3, max_iter=250, pca_dims=8, seed=0, trust_neighbors=2, trust_points=5)
    return NeighbourhoodMap(title, points, params, 0.9, 2, True, {})


ODD_NAMES = [
    "/photos/__DATA__.jpg",
    "/photos/__TITLE__.jpg",
    "/photos/{{data}}.jpg",
    "/photos/{{viewer_js}}.jpg",
    "/photos/</script><script>alert(1)</script>.jpg",
    "/photos/<!--a&b>\u2028\u2029.jpg",
]


def test_html_map_keeps_file_names_that_look_like_placeholders_or_markup_as_they_are():
    m = synthetic_map([(i, -i) for i in range(len(ODD_NAMES))], ODD_NAMES, title="more like __DATA__.jpg")
    page = render_html(m, [None] * len(ODD_NAMES))
    data = _html_data(page)
    assert [p["path"] for p in data["points"]] == ODD_NAMES
    assert data["title"] == "more like __DATA__.jpg"
    assert "<title>Neighbourhood map of more like __DATA__.jpg</title>" in page
    # Nothing the names bring can open or close an element: the page's scripts are the template's three.
    assert page.count("<script") == page.count("</script>") == 3
    assert "<!--" not in page and "\u2028" not in page and "\u2029" not in page


def test_templates_are_filled_in_one_pass_and_json_is_safe_inside_a_script():
    assert fill_template("{{a}}|{{b}}", {"a": "{{b}}", "b": "__b__"}) == "{{b}}|__b__"
    with pytest.raises(KeyError):
        fill_template("{{missing}}", {})
    value = {"s": "</script><!-- & \u2028\u2029 é"}
    text = script_json(value)
    assert json.loads(text) == value
    assert not any(c in text for c in "<>&\u2028\u2029") and "é" in text


def test_bad_output_name_is_refused_before_any_work(grouped, tmp_path):
    engine, _ = grouped
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g0-2"))), n=6)
    with pytest.raises(UsageError, match=r"\.png, \.svg or \.html"):
        engine.render_map(m, tmp_path / "map.gif")


# -- command line --------------------------------------------------------------------------------------


def _cli(engine: Engine, *args: object):
    return runner.invoke(app, [*map(str, args), "--index", engine.name, "--home", str(engine.dir.parent)])


def test_map_command_writes_the_file_and_reports_what_it_drew(grouped, tmp_path):
    engine, _ = grouped
    photo = engine.meta.records([1])[1].path
    out = tmp_path / "m.html"
    result = _cli(engine, "map", "--similar", photo, "-n", "10", "--out", out, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "10 results" in result.output
    assert "trustworthiness" in result.output and "perplexity" in result.output


def test_map_command_as_json_lists_points_and_parameters(grouped, tmp_path):
    engine, _ = grouped
    photo = engine.meta.records([2])[2].path
    result = _cli(engine, "map", "--image", photo, "-n", "6", "--out", tmp_path / "m.png", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["points"]) == 7 and payload["params"]["seed"] == 0 and payload["trustworthiness"] > 0


def test_map_command_says_in_one_line_when_there_are_too_few_points(grouped, tmp_path):
    engine, _ = grouped
    result = _cli(engine, "map", "--similar", "1", "-n", "3", "--out", tmp_path / "m.png")
    assert result.exit_code == 2
    assert "at least 5 points" in result.output and len(result.output.strip().splitlines()) == 1


def test_map_command_needs_exactly_one_query(grouped, tmp_path):
    engine, _ = grouped
    result = _cli(engine, "map", "--out", tmp_path / "m.png")
    assert result.exit_code == 2 and "exactly one" in result.output
    result = _cli(engine, "map", "--similar", "1", "--image", engine.meta.records([2])[2].path)
    assert result.exit_code == 2 and "exactly one" in result.output


def test_map_of_an_index_with_nothing_else_is_an_empty_result_error(make_photos, home):
    paths = make_photos(1)
    with Engine("single", model="classic") as engine:
        engine.ingest(paths[0].parent)
        with pytest.raises(QueryError, match="no results"):
            engine.map(Query.of(QueryPart("id", 1)))


# -- the HTML page in a browser -----------------------------------------------------------------------

POSITIONS = "() => RetrievalMap.viewerOf(document.getElementById('map')).positions()"
SETTLED = "() => document.getElementById('map').dataset.loading === '0'"


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        pytest.skip("no Chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            yield sync_api, browser
        finally:
            browser.close()


def _open(browser, path: Path, problems: list[str]):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function(SETTLED)
    return page


@pytest.mark.browser
def test_html_map_hovers_zooms_and_opens_the_original_in_chromium(grouped, tmp_path, chromium):
    sync_api, browser = chromium
    engine, _ = grouped
    m = engine.map(Query.of(QueryPart("id", _first_id(engine, "g2-0"))), n=10, expand=2)
    problems: list[str] = []
    page = _open(browser, engine.render_map(m, tmp_path / "map.html").path, problems)
    try:
        page.evaluate("() => { window.open = (url) => { window.opened = url; }; }")
        canvas = page.locator("#map")
        assert canvas.get_attribute("data-thumbs") == str(len(m.points))  # every picture drawn
        spots = page.evaluate(POSITIONS)
        result = next(s for s in spots if s["role"] == "result")
        page.mouse.move(result["x"], result["y"])
        tip = page.locator("#tip")
        sync_api.expect(tip).to_be_visible()
        assert tip.locator(".path").inner_text() == result["path"]
        assert tip.locator("img").count() == 1
        page.mouse.click(result["x"], result["y"])
        assert page.evaluate("() => window.opened") == Path(result["path"]).as_uri()

        before = canvas.screenshot()
        page.mouse.wheel(0, -500)
        page.wait_for_timeout(100)
        assert canvas.screenshot() != before
        assert not problems, problems
    finally:
        page.close()


@pytest.mark.browser
def test_html_map_draws_y_up_like_the_png(tmp_path, chromium):
    _, browser = chromium
    m = synthetic_map([(0, 0), (-1, -1), (1, -1), (1, 1), (-1, 1), (0, 2)])
    path = tmp_path / "map.html"
    path.write_text(render_html(m, [None] * len(m.points)))
    problems: list[str] = []
    page = _open(browser, path, problems)
    try:
        spots = page.evaluate(POSITIONS)
        for i in range(len(spots) - 1):
            a, b = m.points[i], m.points[i + 1]
            assert np.sign(spots[i + 1]["x"] - spots[i]["x"]) == np.sign(b.x - a.x)
            assert np.sign(spots[i + 1]["y"] - spots[i]["y"]) == -np.sign(b.y - a.y)  # y up, pixels down
        assert not problems, problems
    finally:
        page.close()


@pytest.mark.browser
def test_html_map_fits_the_central_points_and_leaves_a_far_outlier_out_of_view(tmp_path, chromium):
    _, browser = chromium
    grid = [(i % 15 / 14, i // 15 / 9) for i in range(150)]  # a 15 x 10 grid in the unit square
    m = synthetic_map([*grid, (1000.0, -1000.0)])
    path = tmp_path / "map.html"
    path.write_text(render_html(m, [None] * len(m.points)))
    problems: list[str] = []
    page = _open(browser, path, problems)
    try:
        spots = page.evaluate(POSITIONS)
        box = page.locator("#map").bounding_box()
        xs = [s["x"] for s in spots[:-1]]
        ys = [s["y"] for s in spots[:-1]]
        assert max(xs) - min(xs) > 0.4 * box["width"]  # all but the outlier fill the canvas
        assert max(ys) - min(ys) > 0.4 * box["height"]
        assert spots[-1]["x"] > box["x"] + box["width"]  # the outlier is off to the right
        assert not problems, problems
    finally:
        page.close()

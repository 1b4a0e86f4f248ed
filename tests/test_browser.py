"""The search page in headless Chromium (Debian's `chromium`, driven by Playwright): type, drop, click, map.

Skipped when Playwright or Chromium is missing; `.ci/run` installs both, so CI runs it. Screenshots go to
test-artifacts/ at the top of the repository.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.photos import draw_photo

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
CHROMIUM = os.environ.get("RETRIEVAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

import uvicorn  # noqa: E402

from retrieval.engine import Engine  # noqa: E402
from retrieval.search.queries import Query, QueryPart  # noqa: E402
from retrieval.serve.app import create_app  # noqa: E402
from retrieval.vectors.hnsw.store import StoreParams, VectorStore  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
N_PHOTOS = 12
# The last photo's name: longer than its tile, so the tile shortens it in the middle.
LONG_NAME = "photo011 taken on a long summer afternoon by the sea, before the storm.jpg"
# What the security headers will ask of the page: no inline script or style, no eval, nothing from elsewhere.
CSP = "default-src 'self'"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    draw_photo(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine, Path]]:
    """A random tiny CLIP index of drawn photos, served by uvicorn on a free loopback port."""
    root = tmp_path_factory.mktemp("browser")
    photos = root / "photos"
    photos.mkdir()
    for i in range(N_PHOTOS):
        (photos / (f"photo{i:03d}.jpg" if i < N_PHOTOS - 1 else LONG_NAME)).write_bytes(jpeg(i))
    # See tests/test_server.py, tiny_clip_engine: a 32-dim graph head keeps the 64-dim store saveable.
    VectorStore.create(root / "home" / "web" / "vectors", 64, StoreParams(graph_dims=32)).close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = Engine("web", home=root / "home", model="clip:tiny-test", pretrained=None, device="cpu")
        engine.ingest(photos)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", engine, photos
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, base: str, problems: list[str]):
    """The search page served under the strict CSP, with page errors, console errors (CSP violations among
    them), failed responses and requests to anywhere else collected in `problems`."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on(
        "request", lambda r: None if r.url.startswith((base, "blob:", "data:")) else problems.append(r.url)
    )

    def strict(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    page.route(base + "/", strict)
    page.goto(base + "/")
    return page


DROP = """([name, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: "image/jpeg" }));
    const target = document.getElementById("drop");
    target.dispatchEvent(new DragEvent("dragenter", { dataTransfer: data, bubbles: true, cancelable: true }));
    const highlighted = document.body.classList.contains("dragging");
    target.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    return highlighted;
}"""

THUMBS_LOADED = """() => {
    const images = [...document.querySelectorAll("#grid img")];
    return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);
}"""

OTHERS_LOADED = """() => [...document.querySelectorAll("#grid .thumb:not(.failed) img")]
    .every((i) => i.complete && i.naturalWidth > 0)"""

MAP_DRAWN = """() => {
    const canvas = document.getElementById("map");
    return canvas.dataset.points > 0 && canvas.dataset.thumbs === canvas.dataset.points;
}"""


POSITIONS = "() => RetrievalMap.viewerOf(document.getElementById('map')).positions()"


def test_search_page_types_drops_clicks_and_maps_under_a_strict_csp(served, browser):
    base, engine, photos = served
    id_of = {p.name: engine.meta.content_id_for_path(p) for p in photos.iterdir()}
    ARTIFACTS.mkdir(exist_ok=True)
    expect = sync_api.expect
    problems: list[str] = []
    page = open_page(browser, base, problems)
    try:
        expect(page.locator("#stats")).to_contain_text(f"web · {N_PHOTOS} images")
        # The index runs on random weights: the page says its results mean nothing.
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner")).to_contain_text("random weights")

        # Type a query: a grid of thumbnails with scores.
        page.fill("#q", "a red square")
        page.press("#q", "Enter")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)
        page.wait_for_function(THUMBS_LOADED)
        assert float(page.locator("#grid .hit .score").first.inner_text()) <= 1.0
        expect(page.locator("#query-label")).to_contain_text("a red square")
        page.screenshot(path=str(ARTIFACTS / "browser-results.png"))

        # Drop an image: the indexed photo it copies comes first; its picture is drawn, no blob: URL needed.
        highlighted = page.evaluate(DROP, ["dropped.jpg", base64.b64encode(jpeg(7)).decode()])
        assert highlighted
        expect(page.locator("#query-label")).to_contain_text("like dropped.jpg")
        expect(page.locator("#grid .hit").first).to_have_attribute("data-id", str(id_of["photo007.jpg"]))
        assert "dragging" not in (page.locator("body").get_attribute("class") or "")

        # The file picker does the same.
        page.set_input_files("#file", str(photos / "photo003.jpg"))
        expect(page.locator("#query-label")).to_contain_text("like photo003.jpg")
        expect(page.locator("#grid .hit").first).to_have_attribute("data-id", str(id_of["photo003.jpg"]))

        # Its map: the query is the dropped picture itself, drawn from the file.
        page.click("#tab-map")
        expect(page.locator("#map-info")).to_contain_text("points", timeout=30_000)
        page.wait_for_function(MAP_DRAWN)
        page.click("#tab-grid")

        # Click a result: more like it, itself left out.
        second = page.locator("#grid .hit").nth(1)
        clicked_id = second.get_attribute("data-id")
        second.locator(".thumb").click()
        expect(page.locator("#query-label")).to_contain_text("more like")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS - 1)
        expect(page.locator(f'#grid .hit[data-id="{clicked_id}"]')).to_have_count(0)
        page.wait_for_function(THUMBS_LOADED)

        # Open the map: every point drawn with its thumbnail.
        page.click("#tab-map")
        expect(page.locator("#mapview")).to_be_visible()
        expect(page.locator("#map-info")).to_contain_text("points", timeout=30_000)
        canvas = page.locator("#map")
        expect(canvas).to_have_attribute("data-points", str(N_PHOTOS))
        page.wait_for_function(MAP_DRAWN)
        expect(page.locator("#legend")).to_contain_text("cluster 1")
        page.screenshot(path=str(ARTIFACTS / "browser-map.png"))

        # Hover a result: its whole path; click it: more like it.
        spot = next(s for s in page.evaluate(POSITIONS) if s["role"] == "result")
        page.mouse.move(spot["x"], spot["y"])
        expect(page.locator("#map-tip .path")).to_have_text(spot["path"])
        page.mouse.click(spot["x"], spot["y"])
        expect(page.locator("#query-label")).to_contain_text("more like")
        expect(page.locator("#map-info")).to_contain_text("points", timeout=30_000)
        page.wait_for_function(MAP_DRAWN)
        expect(page.locator(f'#grid .hit[data-id="{spot["id"]}"]')).to_have_count(0)

        # Pan and zoom change the picture.
        before = canvas.screenshot()
        box = canvas.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 60, steps=5)
        page.mouse.up()
        page.wait_for_timeout(100)
        assert canvas.screenshot() != before

        assert not problems, problems
    finally:
        page.close()


def test_search_page_map_and_html_map_draw_the_same_layout_the_same_way_up(served, browser, tmp_path):
    base, engine, photos = served
    expect = sync_api.expect
    query_id = engine.meta.content_id_for_path(photos / "photo005.jpg")
    problems: list[str] = []
    page = open_page(browser, base, problems)
    standalone = browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        page.locator(f'#grid .hit[data-id="{query_id}"] .thumb').click()
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS - 1)
        page.click("#tab-map")
        expect(page.locator("#map-info")).to_contain_text("points", timeout=30_000)
        page.wait_for_function(MAP_DRAWN)
        web = {s["id"]: s for s in page.evaluate(POSITIONS)}

        # The same map (same query, size and seed) written as a page, as `retrieval map --out m.html` does.
        m = engine.map(Query.of(QueryPart("id", query_id)), n=N_PHOTOS - 1, expand=2, seed=0)
        standalone.goto(engine.render_map(m, tmp_path / "map.html").path.as_uri())
        standalone.wait_for_function(MAP_DRAWN)
        offline = {s["id"]: s for s in standalone.evaluate(POSITIONS)}

        assert set(web) == set(offline) == {p.id for p in m.points}
        by_y = [p.id for p in sorted(m.points, key=lambda p: p.y, reverse=True)]  # highest y first
        by_x = [p.id for p in sorted(m.points, key=lambda p: p.x)]
        for drawn in (web, offline):
            assert sorted(drawn, key=lambda i: drawn[i]["y"]) == by_y  # top of the screen first: y up
            assert sorted(drawn, key=lambda i: drawn[i]["x"]) == by_x
        assert not problems, problems
    finally:
        standalone.close()
        page.close()


def test_thumbnails_show_a_placeholder_until_they_load_and_say_so_when_they_fail(served, browser):
    base, _, _ = served
    expect = sync_api.expect
    problems: list[str] = []
    page = open_page(browser, base, problems)
    held: list = []
    page.route("**/api/images/*/thumbnail*", lambda route: held.append(route))

    def release(expected: int) -> str:
        """Let the held thumbnails through but the first, which fails; returns its URL."""
        while len(held) < expected:
            page.wait_for_timeout(20)
        first, *rest = held
        held.clear()
        first.fulfill(status=404, content_type="application/json", body='{"error": "gone"}')
        for route in rest:
            route.continue_()
        return first.request.url

    try:
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)
        # Result tiles: a moving placeholder, the picture not shown, until it loads.
        expect(page.locator("#grid .thumb.loading")).to_have_count(N_PHOTOS)
        tile = page.locator("#grid .thumb").first
        assert tile.evaluate("e => getComputedStyle(e).animationName") == "shimmer"
        assert tile.locator("img").evaluate("e => getComputedStyle(e).opacity") == "0"
        failed = release(N_PHOTOS)
        expect(page.locator("#grid .thumb.loading")).to_have_count(0)
        expect(page.locator("#grid .thumb.failed")).to_have_count(1)
        failed_id = failed.split("/api/images/")[1].split("/")[0]
        expect(page.locator(f'#grid .hit[data-id="{failed_id}"] .thumb')).to_have_class("thumb failed")
        page.wait_for_function(OTHERS_LOADED)

        # Map points: each drawn as a moving placeholder until its thumbnail loads.
        page.click("#tab-map")
        canvas = page.locator("#map")
        expect(canvas).to_have_attribute("data-points", str(N_PHOTOS + 1), timeout=30_000)  # + the text query
        expect(canvas).to_have_attribute("data-loading", str(N_PHOTOS))
        still = canvas.screenshot()
        page.wait_for_timeout(350)
        assert canvas.screenshot() != still  # the placeholders move: not solid blocks
        release(N_PHOTOS)
        expect(canvas).to_have_attribute("data-loading", "0")
        expect(canvas).to_have_attribute("data-thumbs", str(N_PHOTOS - 1))
        expect(canvas).to_have_attribute("data-failed", "1")
        page.screenshot(path=str(ARTIFACTS / "browser-map-failed-thumbnail.png"))
        # The two held thumbnails that failed on purpose are the only problems.
        assert [p for p in problems if "404" not in p and "Failed to load resource" not in p] == []
    finally:
        page.close()


def test_banner_shows_only_for_an_index_on_random_weights(served, browser):
    base, _, _ = served
    expect = sync_api.expect
    problems: list[str] = []
    page = browser.new_page()

    def trained(route):
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "random_weights": False})

    page.route(base + "/api/stats", trained)
    try:
        page.goto(base + "/")
        expect(page.locator("#stats")).to_contain_text(f"web · {N_PHOTOS} images")
        expect(page.locator("#banner")).to_be_hidden()
    finally:
        page.close()
    page = open_page(browser, base, problems)
    try:
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner")).to_contain_text("clip:tiny-test")
        assert not problems, problems
    finally:
        page.close()


NAME_GEOMETRY = """(name) => {
    const head = name.querySelector(".head"), tail = name.querySelector(".tail");
    return {
        shortened: head.scrollWidth > head.clientWidth,
        tailInside: tail.getBoundingClientRect().right <= name.getBoundingClientRect().right + 0.5,
        tailWidth: tail.getBoundingClientRect().width,
    };
}"""


def test_long_file_names_shorten_in_the_middle_keep_their_extension_and_show_whole_on_hover(served, browser):
    base, engine, photos = served
    expect = sync_api.expect
    problems: list[str] = []
    page = open_page(browser, base, problems)
    try:
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        long_id = engine.meta.content_id_for_path(photos / LONG_NAME)
        name = page.locator(f'#grid .hit[data-id="{long_id}"] .name')
        expect(name).to_have_attribute("title", re.compile("^" + re.escape(LONG_NAME) + " · "))
        assert name.text_content() == LONG_NAME
        assert name.locator(".tail").inner_text().endswith(".jpg")
        geometry = name.evaluate(NAME_GEOMETRY)
        assert geometry["shortened"] and geometry["tailInside"] and geometry["tailWidth"] > 0
        short = page.locator(
            f'#grid .hit[data-id="{engine.meta.content_id_for_path(photos / "photo001.jpg")}"] .name'
        )
        assert not short.evaluate(NAME_GEOMETRY)["shortened"]
        assert not problems, problems
    finally:
        page.close()


def test_the_filter_bar_narrows_a_search_and_sends_its_fields_as_filter_parameters(served, browser):
    base, _engine, _photos = served
    expect = sync_api.expect
    problems: list[str] = []
    asked: list[str] = []
    page = open_page(browser, base, problems)
    page.on("request", lambda r: asked.append(r.url) if "/api/search" in r.url else None)
    try:
        expect(page.locator("#filters")).to_be_hidden()  # collapsed until opened
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)

        page.click("#filter-bar summary")
        page.fill("#f-in", "elsewhere")
        page.click("#filters-apply")
        expect(page.locator("#status")).to_contain_text("0 results")
        expect(page.locator("#grid .hit")).to_have_count(0)
        expect(page.locator("#filters-count")).to_have_text("(1)")
        assert "in=elsewhere" in asked[-1]

        # The drawn photos were written today: none was taken before 2000; all of them after.
        page.fill("#f-in", "")
        page.fill("#f-before", "2000-01-01")
        page.click("#filters-apply")
        expect(page.locator("#grid .hit")).to_have_count(0)
        page.fill("#f-before", "")
        page.fill("#f-after", "2000-01-01")
        page.click("#filters-apply")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)
        assert "after=2000-01-01" in asked[-1]

        page.click("#filters-clear")
        expect(page.locator("#filters-count")).to_have_text("")
        expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)
        assert not problems, problems
    finally:
        page.close()

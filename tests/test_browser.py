"""The search page in headless Chromium (Debian's `chromium`, driven by Playwright): type, drop, click, map.

Skipped when Playwright or Chromium is missing; `.ci/run` installs both, so CI runs it. Screenshots go to
test-artifacts/ at the top of the repository.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import draw_photo

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
CHROMIUM = os.environ.get("RETRIEVAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

import uvicorn  # noqa: E402

from retrieval.engine import Engine  # noqa: E402
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
        (photos / f"photo{i:03d}.jpg").write_bytes(jpeg(i))
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

MAP_DRAWN = """() => {
    const canvas = document.getElementById("map");
    return canvas.dataset.points > 0 && canvas.dataset.thumbs === canvas.dataset.points;
}"""


def test_search_page_types_drops_clicks_and_maps(served):
    base, engine, photos = served
    id_of = {p.name: engine.meta.content_id_for_path(p) for p in photos.iterdir()}
    ARTIFACTS.mkdir(exist_ok=True)
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on(
                "request",
                lambda r: None if r.url.startswith((base, "blob:", "data:")) else problems.append(r.url),
            )

            page.goto(base + "/")
            expect(page.locator("#stats")).to_contain_text(f"web · {N_PHOTOS} images")

            # Type a query: a grid of thumbnails with scores.
            page.fill("#q", "a red square")
            page.press("#q", "Enter")
            expect(page.locator("#grid .hit")).to_have_count(N_PHOTOS)
            page.wait_for_function(THUMBS_LOADED)
            assert float(page.locator("#grid .hit .score").first.inner_text()) <= 1.0
            expect(page.locator("#query-label")).to_contain_text("a red square")
            page.screenshot(path=str(ARTIFACTS / "browser-results.png"))

            # Drop an image: the indexed photo it copies comes first.
            highlighted = page.evaluate(DROP, ["dropped.jpg", base64.b64encode(jpeg(7)).decode()])
            assert highlighted
            expect(page.locator("#query-label")).to_contain_text("like dropped.jpg")
            expect(page.locator("#grid .hit").first).to_have_attribute("data-id", str(id_of["photo007.jpg"]))
            assert "dragging" not in (page.locator("body").get_attribute("class") or "")

            # The file picker does the same.
            page.set_input_files("#file", str(photos / "photo003.jpg"))
            expect(page.locator("#query-label")).to_contain_text("like photo003.jpg")
            expect(page.locator("#grid .hit").first).to_have_attribute("data-id", str(id_of["photo003.jpg"]))

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
            browser.close()

"""The HTTP API through a client against the running app: every endpoint, its limits and its errors."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from retrieval_cli.main import app as cli_app
from support.photos import draw_photo
from typer.testing import CliRunner

from retrieval.engine import Engine
from retrieval.errors import IndexCorruptError, UsageError
from retrieval.serve.app import MAX_K, MAX_QUERY_CHARS, create_app

N_PHOTOS = 12
SECRET = "TOP-SECRET-NOT-IN-THE-INDEX"
LOCAL = "http://127.0.0.1:8000"


def local(app, **kwargs) -> TestClient:
    """A client that names the server as a browser on this machine would (the app refuses other names)."""
    return TestClient(app, base_url=LOCAL, **kwargs)


def write_photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"photo{i:03d}.jpg"
        draw_photo(i).save(path, quality=90)
        paths.append(path)
    return paths


def tiny_clip_engine(home: Path, name: str) -> Engine:
    """A random tiny CLIP index: text search works (meaninglessly), which is all the plumbing needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = Engine(name, home=home, model="clip:tiny-test", pretrained=None, device="cpu")
        engine.embedder  # noqa: B018 - loaded here, where its random-weights warning is expected
    return engine


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, list[Path]]]:
    root = tmp_path_factory.mktemp("server")
    (root / "secret.txt").write_text(SECRET)  # next to the photo folder: must never be served
    paths = write_photos(root / "photos", N_PHOTOS)
    with tiny_clip_engine(root / "home", "clip") as engine:
        engine.ingest(root / "photos")
        yield engine, paths


@pytest.fixture(scope="module")
def client(collection: tuple[Engine, list[Path]]) -> Iterator[TestClient]:
    with local(create_app(collection[0])) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def ids(collection: tuple[Engine, list[Path]]) -> dict[str, int]:
    """File name -> image id."""
    engine, paths = collection
    found = {p.name: engine.meta.content_id_for_path(p) for p in paths}
    assert all(v is not None for v in found.values())
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Engine, Path]]:
    """A classic (no text model) index of four photos, one of them with an EXIF capture time."""
    root = tmp_path_factory.mktemp("classic")
    write_photos(root / "photos", 3)
    exif = Image.Exif()
    exif[0x0132] = "2021:07:04 18:30:00"  # DateTime
    draw_photo(3).save(root / "photos" / "dated.jpg", exif=exif.tobytes())
    with Engine("classic", home=root / "home", model="classic") as engine:
        engine.ingest(root / "photos")
        with local(create_app(engine)) as test_client:
            yield test_client, engine, root


def jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    draw_photo(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header declares a huge picture."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


# -- health, stats, schema, page ------------------------------------------------------------------------


def test_health_and_stats_describe_the_served_index(client):
    assert client.get("/api/health").json() == {"status": "ok", "index": "clip", "vectors": N_PHOTOS}
    stats = client.get("/api/stats").json()
    assert stats["index"] == "clip" and stats["model"] == "clip:tiny-test" and stats["dim"] == 64
    assert stats["text_search"] is True
    assert stats["random_weights"] is True  # the page warns that these results mean nothing
    assert stats["images"] == stats["files"] == stats["vectors"] == N_PHOTOS
    assert stats["limits"]["max_k"] == MAX_K
    assert "path" not in stats  # no server paths in answers


def test_openapi_schema_documents_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/api/health",
        "/api/stats",
        "/api/search",
        "/api/search/image",
        "/api/similar/{image_id}",
        "/api/map",
        "/api/map/image",
        "/api/images/{image_id}",
        "/api/images/{image_id}/thumbnail",
    }
    assert "ErrorOut" in str(paths["/api/search"]["get"]["responses"]["422"])


def test_an_app_made_from_an_index_name_opens_it_at_start_and_closes_it_at_stop(small):
    app = create_app("classic", home=small[2] / "home", device="cpu")
    with local(app) as c:
        assert c.get("/api/health").json()["vectors"] == 4
        engine = app.state.served.engine
        assert engine.exists and engine._store is not None  # loaded at start, before any search
    assert engine._meta is None and engine._store is None


def test_page_and_its_assets_are_served_without_anything_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    assert '<script src="/static/map/viewer.js"' in page.text  # the map viewer the .html maps inline
    assets = {
        "/static/app.js": "javascript",
        "/static/style.css": "text/css",
        "/static/map/viewer.js": "javascript",
        "/static/map/viewer.css": "text/css",
    }
    for asset, kind in assets.items():
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert (
            "http://" not in response.text
            and "https://" not in response.text
            and "//cdn" not in response.text
        )
    assert "http://" not in page.text and "https://" not in page.text
    # Nothing a strict Content-Security-Policy (default-src 'self') refuses: no inline script or style.
    assert not re.search(
        r"<script(?![^>]*\ssrc=)|<style|\son[a-z]+=|\sstyle=|(src|href)=\"(data|blob):", page.text
    )
    assert client.get("/static/map/render.py").status_code == 404  # only the viewer's files, no code
    # FastAPI's own docs pages load scripts from a CDN: they are off; the schema is served.
    assert client.get("/docs").status_code == client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "retrieval"


def test_unknown_routes_answer_404_in_json(client):
    assert_error(client.get("/api/nothing-here"), 404)
    assert_error(client.post("/api/health"), 405)


# -- searching ---------------------------------------------------------------------------------------------


def test_text_search_returns_k_hits_with_paths_relative_to_the_indexed_folder(client, collection):
    engine, paths = collection
    response = client.get("/api/search", params={"q": "a red square", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["k"] == 5 and len(body["results"]) == 5
    names = {p.name for p in paths}
    for rank, hit in enumerate(body["results"], 1):
        assert hit["rank"] == rank and hit["path"] in names and not hit["path"].startswith("/")
        assert (hit["width"], hit["height"]) == (192, 144) and hit["captured_at"] is None
        assert (
            hit["thumbnail"] == f"/api/images/{hit['id']}/thumbnail"
            and hit["image"] == f"/api/images/{hit['id']}"
        )
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    expected = engine.search_text("a red square", k=5)
    assert [h["id"] for h in body["results"]] == [h.id for h in expected]


def test_capture_time_is_returned_when_the_photo_has_one(small):
    c, _, root = small
    upload = {"image": ("q.jpg", (root / "photos" / "dated.jpg").read_bytes(), "image/jpeg")}
    top = c.post("/api/search/image", files=upload, params={"k": 1}).json()["results"][0]
    assert top["path"] == "dated.jpg" and top["captured_at"] == "2021-07-04T18:30:00"


@pytest.mark.parametrize("k", ["0", str(MAX_K + 1), "-3", "ten", "2.5"])
def test_k_out_of_bounds_is_refused(client, k):
    assert_error(client.get("/api/search", params={"q": "beach", "k": k}), 422, "k")


def test_query_text_is_bounded_and_required(client):
    assert_error(client.get("/api/search", params={"q": "x" * (MAX_QUERY_CHARS + 1)}), 422, "q")
    assert_error(client.get("/api/search"), 422, "q")
    assert_error(client.get("/api/search", params={"q": ""}), 422, "q")
    assert_error(client.get("/api/search", params={"q": "   "}), 400, "empty")
    assert client.get("/api/search", params={"q": "x" * MAX_QUERY_CHARS, "k": 1}).status_code == 200


def test_text_search_on_an_index_without_a_text_model_says_so(small):
    c = small[0]
    stats = c.get("/api/stats").json()
    assert stats["text_search"] is False
    assert stats["random_weights"] is False  # the classic embedder has no weights to be random
    assert_error(c.get("/api/search", params={"q": "beach"}), 400, "no text encoder")


def test_an_uploaded_copy_of_an_indexed_photo_finds_it_first(client, ids):
    upload = {"image": ("query.jpg", jpeg_bytes(7), "image/jpeg")}
    body = client.post("/api/search/image", files=upload, params={"k": 3}).json()
    assert body["query"] == "+image:<upload>"
    assert body["results"][0]["id"] == ids["photo007.jpg"] and body["results"][0]["score"] > 0.99


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, ("empty",)),
        (b"definitely not an image", 422, ("not an image",)),
        (jpeg_bytes(1)[:400], 422, ("image rejected",)),
        (png_bomb(), 413, ("decompression",)),
    ],
    ids=["empty", "not-an-image", "truncated", "bomb"],
)
def test_unreadable_uploads_are_rejected_with_the_decoders_reason(client, data, status, words):
    response = client.post("/api/search/image", files={"image": ("bad.jpg", data, "image/jpeg")})
    assert_error(response, status, *words)


def test_upload_without_a_file_is_refused(client):
    assert_error(client.post("/api/search/image", data={"k": "3"}), 422, "image")


def test_uploads_above_the_limit_are_refused_before_decoding(collection):
    with local(create_app(collection[0], max_upload_bytes=20_000)) as small:
        # Over the file limit but within the request allowance: refused after reading at most limit+1 bytes.
        big_file = {"image": ("big.jpg", b"\xff" * 40_000, "image/jpeg")}
        assert_error(small.post("/api/search/image", files=big_file), 413, "larger than")
        # A whole request over the allowance is refused by its Content-Length, before it is read.
        huge = {"image": ("huge.jpg", b"\xff" * 200_000, "image/jpeg")}
        assert_error(small.post("/api/map/image", files=huge), 413, "larger than")
        # A chunked body has no length to check: refused outright.
        chunks = iter([b"--x\r\n", b"\xff" * 10])
        response = small.post(
            "/api/search/image", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert_error(response, 411, "Content-Length")
        assert small.post(
            "/api/search/image", files={"image": ("ok.jpg", jpeg_bytes(2), "image/jpeg")}
        ).is_success


def test_uploads_get_a_lower_pixel_budget_than_ingest(client):
    # 7000x7000 (49 MP) is within what ingest decodes from a folder, above what the server decodes for anyone.
    upload = {"image": ("big.png", png_bomb(7000, 7000), "image/png")}
    assert_error(client.post("/api/search/image", files=upload), 413, "decompression", "40,000,000 pixels")


def test_similar_leaves_the_image_itself_out(client, ids):
    target = ids["photo004.jpg"]
    body = client.get(f"/api/similar/{target}", params={"k": N_PHOTOS}).json()
    assert body["query"] == f"+id:{target}"
    assert len(body["results"]) == N_PHOTOS - 1 and target not in {h["id"] for h in body["results"]}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/similar/999999", 404),
        ("/api/similar/-1", 422),
        ("/api/similar/abc", 422),
        (f"/api/similar/{2**70}", 422),
    ],
)
def test_similar_to_an_unknown_id_is_refused(client, path, status):
    assert_error(client.get(path), status)


# -- images --------------------------------------------------------------------------------------------------


def test_original_is_the_indexed_file_byte_for_byte(client, collection, ids):
    _, paths = collection
    response = client.get(f"/api/images/{ids['photo003.jpg']}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == paths[3].read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"


def test_thumbnails_come_in_two_sizes_and_revalidate_by_etag(client, ids):
    image_id = ids["photo005.jpg"]
    large = client.get(f"/api/images/{image_id}/thumbnail")
    small = client.get(f"/api/images/{image_id}/thumbnail", params={"size": "small"})
    assert large.headers["content-type"] == small.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(large.content)).size == (192, 144)  # never enlarged
    assert max(Image.open(io.BytesIO(small.content)).size) == 96
    again = client.get(f"/api/images/{image_id}/thumbnail", headers={"if-none-match": large.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert_error(client.get(f"/api/images/{image_id}/thumbnail", params={"size": "huge"}), 422, "size")


def test_unknown_image_ids_get_404(client):
    assert_error(client.get("/api/images/999999"), 404, "999999")
    assert_error(client.get("/api/images/999999/thumbnail"), 404, "999999")


def test_an_image_whose_file_has_gone_is_404_not_500(small):
    c, engine, root = small
    moved = root / "photos" / "photo000.jpg"
    image_id = engine.meta.content_id_for_path(moved)
    moved.rename(root / "elsewhere.jpg")
    try:
        assert_error(c.get(f"/api/images/{image_id}"), 404, "gone")
        assert_error(c.get(f"/api/images/{image_id}/thumbnail"), 404, "can no longer be read")
    finally:
        (root / "elsewhere.jpg").rename(moved)
    assert c.get(f"/api/images/{image_id}").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/..%2Fsecret.txt",
        "/api/images/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images/%252e%252e%252fsecret.txt",
        "/api/images/%2e%2e",
        "/api/images/1%2F..%2F..%2Fsecret.txt",
        "/api/images/1/..%2F..%2Fsecret.txt",
        "/api/images/1/thumbnail/..%2F..%2Fsecret.txt",
        "/api/images/1/../../secret.txt",
        "/api/images/C:%5Cwindows%5Cwin.ini",
        "/api/images/~root",
        "/api/images/1/thumbnail?size=..%2F..%2Fsecret.txt",
        "/api/images?path=../secret.txt",
        "/static/..%2F..%2Fsecret.txt",
        "/static/../server.py",
        "/static/..%2Fserver.py",
        "/static/%2e%2e/server.py",
        "/static/%2Fetc%2Fpasswd",
    ],
)
def test_path_traversal_on_image_and_static_routes_serves_nothing(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert SECRET not in response.text and "root:" not in response.text
    assert "def create_app" not in response.text
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    "raw", ["/static/../server.py", "/static/../../secret.txt", "/api/images/1/../../../secret.txt"]
)
def test_dot_segments_that_no_client_normalised_serve_nothing(client, raw):
    """HTTP clients remove `..` segments before sending; a hand-made request keeps them."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw,
        "raw_path": raw.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(client.app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 404 and SECRET.encode() not in body and b"def create_app" not in body


# -- maps ----------------------------------------------------------------------------------------------------


def test_map_of_a_text_query_has_coordinates_scores_and_clusters(client, collection):
    body = client.get("/api/map", params={"q": "a red square", "n": 8, "expand": 1}).json()
    points = body["points"]
    assert points[0]["role"] == "query" and points[0]["id"] is None and points[0]["cluster"] == -1
    results = [p for p in points if p["role"] == "result"]
    assert len(results) == 8 and [p["rank"] for p in results] == list(range(1, 9))
    assert {p["role"] for p in points} <= {"query", "result", "context"} and len(points) > 9
    assert body["clusters"] >= 1 and all(0 <= p["cluster"] < body["clusters"] for p in points[1:])
    assert 0.0 <= body["trustworthiness"] <= 1.0 and body["title"] == '"a red square"'
    names = {p.name for p in collection[1]}
    assert all(p["path"] in names for p in points[1:])
    assert all(p["thumbnail"] == f"/api/images/{p['id']}/thumbnail?size=small" for p in points[1:])
    top = client.get("/api/search", params={"q": "a red square", "k": 8}).json()["results"]
    assert [p["id"] for p in results] == [h["id"] for h in top]


def test_map_around_an_indexed_image_and_an_upload(client, ids):
    like = client.get("/api/map", params={"like": ids["photo002.jpg"], "n": 6}).json()
    assert like["points"][0]["id"] == ids["photo002.jpg"] and like["points"][0]["path"] == "photo002.jpg"
    upload = {"image": ("q.jpg", jpeg_bytes(9), "image/jpeg")}
    mapped = client.post("/api/map/image", files=upload, params={"n": 6}).json()
    assert mapped["title"] == "an uploaded image" and len(mapped["points"]) == 7
    assert mapped["points"][1]["id"] == ids["photo009.jpg"]


@pytest.mark.parametrize(
    ("params", "status", "word"),
    [
        ({}, 422, "exactly one"),
        ({"q": "sea", "like": 1}, 422, "exactly one"),
        ({"q": "sea", "n": 3}, 422, "n"),
        ({"q": "sea", "n": 201}, 422, "n"),
        ({"q": "sea", "expand": 4}, 422, "expand"),
        ({"like": 999999}, 404, "999999"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, 422, "q"),
    ],
)
def test_map_parameters_are_checked(client, params, status, word):
    assert_error(client.get("/api/map", params=params), status, word)


def test_a_map_with_too_few_images_explains_why(small):
    # Four images: one asked about, three results, the query itself: below the five points of a map.
    assert_error(small[0].get("/api/map", params={"like": 1, "n": 10}), 400, "at least")


# -- concurrency ---------------------------------------------------------------------------------------------


def test_concurrent_requests_all_answer_the_same_as_one_at_a_time(client):
    queries = ["sea", "a red square", "mountains at dusk", "cat"]
    expected = {q: client.get("/api/search", params={"q": q, "k": 5}).json()["results"] for q in queries}

    def same(got: dict, want: dict) -> bool:
        # Concurrent texts share a forward of the text tower, which rounds in the 7th digit of a score.
        return {**got, "score": None} == {**want, "score": None} and abs(got["score"] - want["score"]) < 1e-5

    def ask(i: int) -> bool:
        q = queries[i % len(queries)]
        response = client.get("/api/search", params={"q": q, "k": 5})
        results = response.json()["results"] if response.status_code == 200 else []
        return len(results) == len(expected[q]) and all(map(same, results, expected[q]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(ask, range(48)))


def test_searches_during_an_ingest_by_another_writer_see_the_old_or_the_new_index(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, 6)
    home = tmp_path / "home"
    with Engine("live", home=home, model="classic") as served:
        served.ingest(photos)
        with local(create_app(served, max_heavy=3)) as c:  # a slot for each of the 3 readers
            before = c.get("/api/stats").json()
            write_photos(photos, 6, start=6)
            done = threading.Event()
            failures: list[str] = []
            rounds: list[int] = []

            def read_while_writing() -> None:
                while not done.is_set():
                    for response in (
                        c.post("/api/search/image", files={"image": ("q.jpg", jpeg_bytes(2), "image/jpeg")}),
                        c.get("/api/stats"),
                    ):
                        if response.status_code != 200:
                            failures.append(response.text)
                    n = len(
                        c.post("/api/search/image", files={"image": ("q.jpg", jpeg_bytes(2))}).json()[
                            "results"
                        ]
                    )
                    if not 6 <= n <= 12:
                        failures.append(f"{n} results from an index that had 6, then 12 images")
                    rounds.append(n)
                    time.sleep(0.01)  # leave the writer some of the two cores

            readers = [threading.Thread(target=read_while_writing) for _ in range(3)]
            for reader in readers:
                reader.start()
            try:
                with Engine("live", home=home) as writer:  # another writer, as another process would be
                    writer.ingest(photos)
            finally:
                done.set()
                for reader in readers:
                    reader.join()
            after = c.get("/api/stats").json()
    assert not failures, failures[:3]
    assert len(rounds) >= 3  # the readers did read while the writer wrote
    assert before["images"] == 6 and after["images"] == after["vectors"] == 12
    assert after["generation"] > before["generation"]


def test_the_server_switches_to_another_writer_s_generation_in_the_background_before_any_request(
    tmp_path, caplog
):
    photos = tmp_path / "photos"
    write_photos(photos, 3)
    home = tmp_path / "home"
    with pytest.raises(UsageError, match="refresh_every"):
        create_app("live", home=home, refresh_every=0)
    with Engine("live", home=home, model="classic") as first:
        first.ingest(photos)
    with Engine("live", home=home) as served:  # reads only: a store it wrote is left to its searches
        calls = 0
        refresh = served.refresh

        def failing_twice(*, warm: bool = False) -> bool:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise IndexCorruptError("vectors/MANIFEST.json is garbled")
            return refresh(warm=warm)

        served.refresh = failing_twice  # type: ignore[method-assign]
        with local(create_app(served, refresh_every=0.05)):
            before = served.store.generation
            write_photos(photos, 2, start=3)
            with Engine("live", home=home) as writer:  # another writer, as another process would be
                writer.ingest(photos)
            deadline = time.monotonic() + 30
            while served.store.generation == before and time.monotonic() < deadline:
                time.sleep(0.05)  # no request asks: only the background refresh can switch
            assert served.store.generation > before and len(served.store) == 5
    said = [r.getMessage() for r in caplog.records if "background refresh" in r.getMessage()]
    assert len(said) == 1 and "garbled" in said[0]  # said once, then tried again until it worked


# -- the command ---------------------------------------------------------------------------------------------


def test_serve_command_runs_uvicorn_on_loopback_by_default(small, monkeypatch):
    import uvicorn

    home = str(small[2] / "home")
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--index", "classic", "--home", home, "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8123/" in result.output
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8123
    # Any other address needs the names clients will use, or a token (tests/test_security.py).
    exposed = ["serve", "--index", "classic", "--home", home, "--host", "0.0.0.0"]
    result = runner.invoke(cli_app, [*exposed, "--allowed-host", "photos.lan"])
    assert (
        result.exit_code == 0 and calls[1]["host"] == "0.0.0.0" and "anyone who can reach it" in result.output
    )


def test_serve_command_refuses_a_missing_index_in_one_line(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--index", "nope", "--home", str(tmp_path / "home")])
    assert result.exit_code == 4
    assert "no index named 'nope'" in result.output

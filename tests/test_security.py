"""What the server refuses (issue 14): other Host names, calls without the token, files that are no longer
the ones indexed, heavy requests beyond their share, trickled headers; and a schema-driven fuzz of the API."""

from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from PIL import Image
from retrieval_cli.main import app as cli_app
from test_server import assert_error, jpeg_bytes, local, png_bomb, tiny_clip_engine, write_photos
from typer.testing import CliRunner

import retrieval.files.decoding
import retrieval.maps.layout
from retrieval.engine import Engine
from retrieval.serve import app as served_app
from retrieval.serve.app import create_app

TOKEN = "correct-horse-battery-staple-42"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECRET = "root:x:0:0:NOT-A-PHOTO"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A random tiny CLIP index of eight drawn photos: text search, uploads and maps all work."""
    root = tmp_path_factory.mktemp("security")
    write_photos(root / "photos", 8)
    with tiny_clip_engine(root / "home", "sec") as engine:
        engine.ingest(root / "photos")
        yield engine


@pytest.fixture
def classic(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    """A classic index of four photos that a test may tamper with; a secret file sits outside the folder."""
    (tmp_path / "secret.txt").write_text(SECRET)
    write_photos(tmp_path / "photos", 4)
    with Engine("tamper", home=tmp_path / "home", model="classic") as engine:
        engine.ingest(tmp_path / "photos")
        yield engine, tmp_path


def image_id(engine: Engine, path: Path) -> int:
    found = engine.meta.content_id_for_path(path)
    assert found is not None
    return found


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, str], tuple[threading.Event, threading.Event]]:
    """Make `module.name` wait (once entered: `entered`) until the test sets `release`."""
    releases: list[threading.Event] = []

    def hold(module: object, name: str) -> tuple[threading.Event, threading.Event]:
        entered, release = threading.Event(), threading.Event()
        real = getattr(module, name)

        def slow(*args, **kwargs):
            entered.set()
            release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, slow)
        releases.append(release)
        return entered, release

    yield hold
    for release in releases:
        release.set()


# -- DNS rebinding: the Host header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/search?q=sea", "/api/images/1", "/", "/static/app.js", "/openapi.json"]
)
def test_a_page_on_another_name_that_resolves_here_reads_nothing(clip, path):
    """DNS rebinding: http://evil.example:8000 resolving to 127.0.0.1 sends `Host: evil.example:8000`."""
    with local(create_app(clip)) as c:
        response = c.get(path, headers={"host": "evil.example:8000"})
        assert_error(response, 400, "evil.example", "--allowed-host")
        assert "results" not in response.text and "<html" not in response.text


@pytest.mark.parametrize(
    ("options", "host", "answered"),
    [
        ({}, "127.0.0.1:8000", True),
        ({}, "localhost:9999", True),
        ({}, "LOCALHOST", True),
        ({}, "[::1]:8000", True),
        ({}, "127.0.0.1.evil.example", False),
        ({}, "localhost.evil.example:8000", False),
        ({}, "", False),
        ({}, "127.0.0.1:80:80", False),
        ({"host": "192.168.1.5", "token": TOKEN}, "192.168.1.5:8000", True),
        ({"host": "192.168.1.5", "token": TOKEN}, "192.168.1.6:8000", False),
        ({"host": "::", "token": TOKEN}, "[fe80::1]:8000", True),
        ({"host": "0.0.0.0", "token": TOKEN}, "10.1.2.3:8000", True),
        ({"host": "0.0.0.0", "token": TOKEN}, "photos.lan:8000", False),
        ({"host": "0.0.0.0", "allowed_hosts": ["Photos.LAN"]}, "photos.lan:8000", True),
        ({"host": "0.0.0.0", "allowed_hosts": ["photos.lan"]}, "photos.lan.evil.example", False),
    ],
)
def test_the_server_answers_to_loopback_its_own_address_and_allowed_names_only(clip, options, host, answered):
    token = options.get("token")
    with local(create_app(clip, **options)) as c:
        headers = {"host": host, **({"authorization": f"Bearer {token}"} if token else {})}
        response = c.get("/api/health", headers=headers)
    if answered:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 400, "Host")


def test_the_page_its_files_and_the_api_carry_security_headers(clip):
    with local(create_app(clip)) as c:
        for path in ("/", "/static/app.js", "/static/style.css", "/api/stats", "/api/images/1/thumbnail"):
            response = c.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-security-policy"] == CSP, path
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["referrer-policy"] == "no-referrer", path
            assert response.headers["cross-origin-resource-policy"] == "same-origin", path
        for path in ("/api/stats", "/api/search?q=sea", "/api/nothing"):
            assert c.get(path).headers["cache-control"] == "no-store", path
        # Pictures are revalidated (thumbnails by ETag) and never kept by shared caches.
        assert c.get("/api/images/1").headers["cache-control"] == "private, no-cache"


# -- the token --------------------------------------------------------------------------------------------


def test_with_a_token_every_api_call_must_carry_it(clip):
    with local(create_app(clip, token=TOKEN)) as c:
        for path in ("/api/health", "/api/search?q=sea", "/api/images/1", "/api/images/1/thumbnail"):
            assert_error(c.get(path), 401, "token")
            assert_error(c.get(path, headers={"authorization": f"Bearer {TOKEN}x"}), 401, "token")
            assert_error(c.get(path, headers={"authorization": f"Basic {TOKEN}"}), 401, "token")
            assert_error(c.get(path, headers={"cookie": f"retrieval_token={TOKEN[:-1]}"}), 401, "token")
            assert c.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert c.get("/api/health").headers["www-authenticate"] == "Bearer"
        # The page and its files are no secret: they load, and ask for the token.
        assert c.get("/").status_code == c.get("/static/app.js").status_code == 200


def test_the_page_opened_with_the_token_gets_a_strict_http_only_cookie_that_images_send(clip):
    with local(create_app(clip, token=TOKEN)) as c:
        assert_error(c.get("/", params={"token": "wrong-" + TOKEN}, follow_redirects=False), 401, "token")
        opened = c.get("/", params={"token": TOKEN}, follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/"  # the token leaves the URL
        cookie = opened.headers["set-cookie"]
        assert cookie.startswith(f"retrieval_token={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        # An <img> cannot send a header: the cookie is what makes thumbnails and originals load.
        assert c.get("/api/images/1/thumbnail").status_code == 200
        assert c.get("/api/search", params={"q": "sea"}).status_code == 200


@pytest.mark.parametrize("token", ["short", "x" * 15, "has space in it 1234", "semi;colon-1234567890"])
def test_a_token_that_is_short_or_not_cookie_safe_is_refused(clip, token):
    with pytest.raises(served_app.UsageError, match="token"):
        create_app(clip, token=token)


def test_a_non_loopback_address_needs_allowed_hosts_or_a_token(clip):
    with pytest.raises(served_app.UsageError, match="--allowed-host"):
        create_app(clip, host="0.0.0.0")
    with pytest.raises(served_app.UsageError, match="--allowed-host"):
        create_app(clip, host="192.168.1.5")
    create_app(clip, host="0.0.0.0", allowed_hosts=["photos.lan"])
    create_app(clip, host="0.0.0.0", token=TOKEN)
    create_app(clip, host="::1")


@pytest.fixture
def serve_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """`uvicorn.run` replaced: records its arguments and, while the engine is open, the status of
    /api/health for some Host names and credentials (`answers`, keyed by (host, authorization))."""
    calls: list[dict[str, object]] = []
    asks = [("127.0.0.1", ""), ("photos.lan:8000", ""), ("nas.local", ""), ("evil.example", "")]
    asks.append(("127.0.0.1", f"Bearer {TOKEN}"))

    def run(app, **kwargs) -> None:
        with local(app) as c:
            answers = {
                (host, auth): c.get(
                    "/api/health", headers={"host": host, **({"authorization": auth} if auth else {})}
                ).status_code
                for host, auth in asks
            }
            heavy = c.app.state.served.heavy.slots
        calls.append({"app": app, "answers": answers, "heavy": heavy, **kwargs})

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.delenv("RETRIEVAL_TOKEN", raising=False)
    return calls


def test_serve_on_a_non_loopback_address_without_allowed_host_or_token_exits_2(classic, serve_calls):
    home = str(classic[1] / "home")
    result = CliRunner().invoke(cli_app, ["serve", "-i", "tamper", "--home", home, "--host", "0.0.0.0"])
    assert result.exit_code == 2, result.output
    assert "--allowed-host" in result.output and "--token" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not serve_calls


def test_serve_takes_the_token_from_the_environment_and_prints_the_address_that_carries_it(
    classic, serve_calls, monkeypatch
):
    monkeypatch.setenv("RETRIEVAL_TOKEN", TOKEN)
    home = str(classic[1] / "home")
    args = ["serve", "-i", "tamper", "--home", home, "--host", "0.0.0.0", "--port", "8123"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert f":8123/?token={TOKEN}" in result.output and "TLS" in result.output
    answers = serve_calls[0]["answers"]
    assert answers[("127.0.0.1", "")] == 401 and answers[("127.0.0.1", f"Bearer {TOKEN}")] == 200


def test_serve_answers_allowed_host_names_and_runs_uvicorn_with_its_limits(classic, serve_calls):
    home = str(classic[1] / "home")
    args = ["serve", "-i", "tamper", "--home", home, "--host", "0.0.0.0", "--allowed-host", "photos.lan"]
    result = CliRunner().invoke(cli_app, [*args, "--allowed-host", "nas.local", "--max-heavy", "3"])
    assert result.exit_code == 0, result.output
    call = serve_calls[0]
    assert call["timeout_keep_alive"] == served_app.KEEP_ALIVE_S
    assert call["limit_concurrency"] == served_app.MAX_CONNECTIONS
    assert call["h11_max_incomplete_event_size"] == served_app.MAX_HEADER_BYTES
    assert issubclass(call["http"], uvicorn.protocols.http.h11_impl.H11Protocol)
    assert call["answers"] == {
        ("127.0.0.1", ""): 200,
        ("photos.lan:8000", ""): 200,
        ("nas.local", ""): 200,
        ("evil.example", ""): 400,
        ("127.0.0.1", f"Bearer {TOKEN}"): 200,  # no token asked for: a header is ignored
    }
    assert call["heavy"] == 3


# -- slowloris -------------------------------------------------------------------------------------------


@pytest.fixture
def live(classic: tuple[Engine, Path]) -> Iterator[int]:
    """The app on a loopback port under uvicorn, with `retrieval serve`'s options and a 0.5 s header limit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    options = served_app.uvicorn_options(header_timeout=0.5)
    server = uvicorn.Server(uvicorn.Config(create_app(classic[0]), log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_within(conn: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes `conn` within `seconds` while the client sends `trickle` every 0.1 s."""
    end = time.monotonic() + seconds
    conn.settimeout(0.1)
    while time.monotonic() < end:
        try:
            if trickle:
                conn.sendall(trickle)
            if conn.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_client_that_trickles_its_headers_or_sends_nothing_is_disconnected(live):
    with socket.create_connection(("127.0.0.1", live)) as conn:
        conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert closed_within(conn, 3, trickle=b"X-Slow: 1\r\n")
    with socket.create_connection(("127.0.0.1", live)) as conn:
        assert closed_within(conn, 3)
    # A request that arrives whole is answered, and the connection stays open for the next one.
    conn = http.client.HTTPConnection("127.0.0.1", live, timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
    finally:
        conn.close()


# -- originals: the file must still be the one indexed ---------------------------------------------------


def test_a_symlink_put_in_place_of_a_photo_is_not_followed(classic):
    engine, root = classic
    photo = root / "photos" / "photo000.jpg"
    target = image_id(engine, photo)
    photo.unlink()
    photo.symlink_to(root / "secret.txt")
    with local(create_app(engine)) as c:
        for path in (f"/api/images/{target}", f"/api/images/{target}/thumbnail"):
            response = c.get(path)
            assert_error(response, 404, str(target))
            assert SECRET not in response.text


def test_a_photo_swapped_for_another_or_edited_since_indexing_is_not_served(classic):
    engine, root = classic
    photos = root / "photos"
    swapped, edited = image_id(engine, photos / "photo001.jpg"), image_id(engine, photos / "photo002.jpg")
    (photos / "photo001.jpg").unlink()
    (photos / "photo001.jpg").symlink_to(photos / "photo003.jpg")  # inside the folder, but another picture
    (photos / "photo002.jpg").write_bytes(jpeg_bytes(99))
    with local(create_app(engine)) as c:
        assert_error(c.get(f"/api/images/{swapped}"), 404, "changed")
        assert_error(c.get(f"/api/images/{edited}"), 404, "changed")
        assert_error(c.get(f"/api/images/{edited}/thumbnail"), 404)
        assert c.get(f"/api/images/{image_id(engine, photos / 'photo003.jpg')}").status_code == 200


def test_a_photo_reached_through_a_symlink_inside_the_folder_is_served(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos / "zz", 2)
    (photos / "aa").symlink_to(photos / "zz", target_is_directory=True)  # walked first: indexed through it
    with Engine("links", home=tmp_path / "home", model="classic") as engine:
        engine.ingest(photos)
        linked = image_id(engine, photos / "aa" / "photo001.jpg")
        assert engine.meta.paths_of([linked])[linked] == [str(photos / "aa" / "photo001.jpg")]
        with local(create_app(engine)) as c:
            response = c.get(f"/api/images/{linked}")
    assert response.status_code == 200 and response.content == (photos / "zz" / "photo001.jpg").read_bytes()


def test_a_damaged_cached_thumbnail_is_made_again(classic):
    engine, _ = classic
    with local(create_app(engine)) as c:
        first = c.get("/api/images/1/thumbnail")
        assert first.status_code == 200
        (cached,) = (engine.dir / "thumbs" / "256").glob("1-*.jpg")  # size=large, the default
        cached.write_bytes(first.content[: len(first.content) // 2])  # a crash or a full disk
        again = c.get("/api/images/1/thumbnail")
    assert again.status_code == 200 and again.content == first.content
    assert cached.read_bytes() == first.content
    Image.open(io.BytesIO(again.content)).load()


# -- heavy requests --------------------------------------------------------------------------------------


def test_a_map_being_laid_out_does_not_hold_up_searches(clip, held):
    entered, release = held(retrieval.maps.layout, "compute_layout")
    with local(create_app(clip)) as c, ThreadPoolExecutor(2) as pool:
        mapping = pool.submit(c.get, "/api/map", params={"q": "sea", "n": 4})
        assert entered.wait(30)
        searching = pool.submit(c.get, "/api/search", params={"q": "sea", "k": 3})
        try:
            search = searching.result(timeout=10)
        finally:
            release.set()
        assert search.status_code == 200 and mapping.result(30).status_code == 200


def test_an_upload_being_decoded_does_not_hold_up_searches(clip, held):
    entered, release = held(retrieval.files.decoding, "decode_image")  # the engine imports it per call
    upload = {"image": ("q.jpg", jpeg_bytes(3), "image/jpeg")}
    with local(create_app(clip)) as c, ThreadPoolExecutor(2) as pool:
        uploading = pool.submit(c.post, "/api/search/image", files=upload)
        assert entered.wait(30)
        searching = pool.submit(c.get, "/api/search", params={"q": "sea", "k": 3})
        try:
            search = searching.result(timeout=10)
        finally:
            release.set()
        assert search.status_code == 200 and uploading.result(30).status_code == 200


def test_heavy_requests_beyond_the_limit_get_503_with_retry_after(clip, held):
    entered, release = held(retrieval.maps.layout, "compute_layout")
    upload = {"image": ("q.jpg", jpeg_bytes(3), "image/jpeg")}
    with local(create_app(clip, max_heavy=1)) as c, ThreadPoolExecutor(1) as pool:
        mapping = pool.submit(c.get, "/api/map", params={"q": "sea", "n": 4})
        assert entered.wait(30)
        try:
            for busy in (
                c.get("/api/map", params={"like": 1, "n": 4}),
                c.post("/api/search/image", files=upload),
                c.post("/api/map/image", files=upload),
            ):
                assert_error(busy, 503, "busy")
                assert int(busy.headers["retry-after"]) >= 1
            assert c.get("/api/search", params={"q": "sea"}).status_code == 200  # light requests go on
        finally:
            release.set()
        assert mapping.result(30).status_code == 200
        assert c.post("/api/search/image", files=upload).status_code == 200  # the slot is free again


def test_a_map_over_its_time_limit_answers_503_and_keeps_its_slot_until_it_ends(clip, held):
    entered, release = held(retrieval.maps.layout, "compute_layout")
    with local(create_app(clip, max_heavy=1, heavy_timeout=0.5)) as c:
        started = time.monotonic()
        late = c.get("/api/map", params={"q": "sea", "n": 4})
        assert_error(late, 503, "longer than")
        assert entered.is_set() and time.monotonic() - started < 10
        assert_error(c.get("/api/map", params={"q": "sea", "n": 4}), 503, "busy")  # still laying out
        release.set()
        deadline = time.monotonic() + 30
        while (response := c.get("/api/map", params={"q": "sea", "n": 4})).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert response.status_code == 200


def test_uploads_have_a_lower_pixel_budget_than_ingest(clip):
    # 50 MP declared: ingest would try to decode it (and find it truncated); an upload is refused unread.
    with local(create_app(clip)) as c:
        big = {"image": ("big.png", png_bomb(8000, 6250), "image/png")}
        response = c.post("/api/search/image", files=big)
    assert_error(response, 413, f"{clip.upload_pixel_budget:,}")
    assert clip.upload_pixel_budget == 40_000_000


# -- low: ranges, ids, the schema ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_", "status"), [("bytes=99999999-", 416), ("items=0-10", 400), ("bytes=9-3", 400), ("bytes", 400)]
)
def test_range_errors_are_one_line_json(clip, range_, status):
    with local(create_app(clip)) as c:
        response = c.get("/api/images/1", headers={"range": range_})
        assert_error(response, status)
        assert response.headers["content-security-policy"] == CSP
        assert c.get("/api/images/1", headers={"range": "bytes=0-9"}).status_code == 206


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/01",
        "/api/images/+1",
        "/api/images/1.0",
        "/api/images/%201",
        "/api/images/1_0",
        "/api/images/01/thumbnail",
        "/api/similar/+1",
        "/api/map?like=01",
        "/api/map?like=1.0",
        "/api/search?q=sea&k=+5",
        "/api/search?q=sea&k=05",
    ],
)
def test_numbers_other_than_plain_decimal_digits_are_refused(clip, path):
    with local(create_app(clip)) as c:
        assert_error(c.get(path), 422, "decimal digits")


def test_the_schema_declares_every_error_a_route_can_answer(clip):
    with local(create_app(clip)) as c:
        schema = c.get("/openapi.json").json()
    ids = {"/api/similar/{image_id}", "/api/map", "/api/images/{image_id}"}
    ids.add("/api/images/{image_id}/thumbnail")
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            expected = {"400", "401", "411", "413", "422", "503"} | ({"404"} if path in ids else set())
            assert expected <= set(responses), (method, path, sorted(responses))
            for status in expected:
                assert responses[status]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorOut"
                }, (path, status)
    map_get = schema["paths"]["/api/map"]["get"]
    params = {p["name"]: p for p in map_get["parameters"]}
    assert "exactly one" in map_get["description"]
    assert "not both" in params["q"]["description"] and "not both" in params["like"]["description"]


# -- the whole API, fuzzed from its schema ---------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(clip):
    app = create_app(clip, allowed_hosts=["testserver"])  # the name schemathesis' ASGI client sends
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@schemathesis.check
def errors_are_one_line_json(ctx, response, case) -> None:
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type}"
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["error"], body
    assert isinstance(body["error"], str) and "\n" not in body["error"] and body["error"].strip()
    assert b"\n" not in response.content


# The schema does not depend on the index: an app that never starts lists the operations to fuzz.
OPERATIONS = [
    (path, method) for path, ops in create_app("unopened").openapi()["paths"].items() for method in ops
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_route_answers_as_its_schema_says_without_a_server_error(api_schema, path, method):
    """Cases drawn from the schema (schemathesis' default checks: no 5xx, documented statuses, content types
    and bodies as declared) plus one: every error is one line of JSON. Values the schema allows can still be
    refused (an upload that is no image, both q and like: 422), so "valid data is accepted" is left out."""

    @settings(
        max_examples=int(os.environ.get("RETRIEVAL_FUZZ_EXAMPLES", "10")),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=api_schema[path][method].as_strategy())
    def check(case) -> None:
        case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

    check()

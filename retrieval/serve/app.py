"""HTTP API and search page over one index: `create_app(engine)` is an ASGI app that `retrieval serve` runs.

The engine (database, vector store, model) is opened once when the app starts and kept warm. Route
handlers are plain functions, so Starlette runs them in its threadpool; they call only `Engine`'s public
methods, which take care of their own locking (see `Engine`). Each search first switches to the
newest generation of the vector store if another process (an ingest) saved one; generations are written
atomically, so a request sees the old index or the new one, never a half-written file. A background thread
(`_Refresher`) looks for a new generation every REFRESH_S and warms it before requests switch to it, so the
first search after an ingest's save does not wait while its links are built.

Images are addressed by their integer id only: the file to send is looked up in the index's database, never
taken from the request. Paths in responses are relative to the indexed folder. Every error is one line of
JSON, `{"error": "..."}`, with a 4xx status for what the client can fix.

Who may ask: a request must name, in its Host header, a name the server answers to (loopback, the address it
listens on, names given as `allowed_hosts`), so a page on another name that resolves here (DNS rebinding)
reads nothing. With a token, every /api call carries it (`Authorization: Bearer`, or the HttpOnly SameSite
cookie that opening `/?token=...` sets: an <img> cannot send a header). The file sent for an image must
still be the one indexed (`Engine.original`). Heavy requests (uploads, maps) have a few slots and a time
limit; `uvicorn_options` bounds connections, header size and the time to send headers (slowloris).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs

import h11
from fastapi import APIRouter, Depends, FastAPI, File, Request, UploadFile
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from retrieval.engine import (
    DEFAULT_INDEX,
    MAP_VIEWER_FILES,
    Engine,
    Filter,
    ImageRecord,
    NeighbourhoodMap,
    Query,
    QueryPart,
    SearchHit,
    parse_filter,
)
from retrieval.errors import (
    DecodeError,
    IndexError_,
    RetrievalError,
    UsageError,
    WeightsUnavailableError,
)

MAX_K = 200
DEFAULT_K = 40
MAX_QUERY_CHARS = 500
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Room for the multipart boundaries and headers around an uploaded file.
_FORM_OVERHEAD = 64 * 1024
#: At most 1 + 200 * (1 + 3) = 801 points: t-SNE lays that out in a few seconds.
MAX_MAP_RESULTS = 200
MAX_MAP_EXPAND = 3
#: "small" is the size maps are drawn with (shared with `retrieval map`), "large" the result grid's.
THUMB_SIDES = {"small": 96, "large": 256}
MAX_ID = 2**62
WEB_DIR = Path(__file__).resolve().parent / "web"

#: Heavy requests (an upload decoded and embedded, a map laid out) at once; more get a 503 at once. Each
#: takes a core for up to seconds: two keep a small machine answering text searches meanwhile.
MAX_HEAVY = 2
#: Seconds a heavy request may take before it answers 503 (its work still holds its slot until it ends).
HEAVY_TIMEOUT_S = 60.0
RETRY_AFTER_S = 2
#: Seconds between the background refresh's looks for a generation another process saved (a manifest read).
REFRESH_S = 1.0
#: uvicorn: keep-alive of an idle connection, open connections (beyond: 503), bytes of a request's headers.
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 128
MAX_HEADER_BYTES = 16 * 1024

_log = logging.getLogger("retrieval.serve")
#: Seconds a client has to send a request's line and headers once connected (or after the last answer).
HEADER_TIMEOUT_S = 10.0

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")
TOKEN_COOKIE = "retrieval_token"
#: Cookie-safe and long enough not to be guessed; `secrets.token_urlsafe(32)` makes one.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")

#: Pictures may stay in the browser's cache but are revalidated (thumbnails by ETag: a map asks for hundreds),
#: and shared caches (proxies) keep none. JSON answers are not stored at all (see `_Headers`).
_PICTURE_CACHING = "private, no-cache"
SECURITY_HEADERS = {
    # The page loads its script, style and pictures from here only; nothing may frame it.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Another site's page cannot even embed the photos as <img> (and measure them).
    "Cross-Origin-Resource-Policy": "same-origin",
}

MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}


# -- response models ----------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: str = Field(description="What went wrong, in one line.")


class HitOut(BaseModel):
    id: int = Field(description="The image's id in the index; use it with /api/images and /api/similar.")
    rank: int
    score: float = Field(description="Cosine similarity with the query, -1..1.")
    path: str = Field(description="Path relative to the indexed folder.")
    width: int
    height: int
    format: str
    captured_at: datetime | None = Field(description="EXIF capture time, when the file has one.")
    copies: int = Field(description="Identical files sharing this image.")
    thumbnail: str = Field(description="URL of its thumbnail.")
    image: str = Field(description="URL of the original file.")


class SearchOut(BaseModel):
    query: str
    k: int
    results: list[HitOut]


class MapPointOut(BaseModel):
    role: Literal["query", "result", "context"] = Field(
        description="The query, a search result, or a result's own neighbour (with expand > 0)."
    )
    id: int | None = Field(description="Image id; null for a text or uploaded query.")
    path: str | None = Field(description="Path relative to the indexed folder; null for the query.")
    x: float
    y: float
    score: float = Field(description="Cosine similarity with the query.")
    rank: int | None = Field(description="Search rank of a result.")
    cluster: int = Field(description="k-means cluster, 0 = largest; -1 for the query.")
    thumbnail: str | None


class MapOut(BaseModel):
    title: str
    trustworthiness: float | None = Field(
        description="How faithful the 2-D layout is to the neighbourhoods (0..1); null for an empty map "
        "(a filter that allows no image)."
    )
    clusters: int
    perplexity: float
    seconds: dict[str, float]
    points: list[MapPointOut]


class StatsOut(BaseModel):
    index: str
    model: str | None
    embedder_id: str | None
    dim: int | None
    text_search: bool = Field(description="Whether the index's model can embed text queries.")
    random_weights: bool = Field(
        description="The model runs on random weights (a test index): its results mean nothing."
    )
    images: int = Field(description="Distinct embedded images.")
    files: int
    folders: int
    failed_files: int
    vectors: int | None  # None: the Milvus server holding them is down
    generation: int = Field(description="Vector-store generation being served; grows with each ingest.")
    bytes_on_disk: dict[str, int]
    limits: dict[str, int]


class HealthOut(BaseModel):
    status: Literal["ok"]
    index: str
    vectors: int | None


# -- the served engine ----------------------------------------------------------------------------------


@dataclass
class _Served:
    """The engine behind an app and the app's limits."""

    engine: Engine
    max_upload_bytes: int
    heavy: _HeavyGate

    def record(self, image_id: int) -> ImageRecord:
        """The indexed image `image_id`, or a 404."""
        record = self.engine.record(image_id)
        if record is None:
            raise HTTPException(404, f"no image with id {image_id} in index {self.engine.name!r}")
        return record


class _Refresher:
    """Switches the engine to each generation another process (an ingest, `serve --watch`) saves, built as
    its first searches would build it before they see it (`Engine.refresh(warm=True)`): otherwise the first
    request after each save waits for the new generation's links and scan bits (~4 s at 1M vectors).
    A failed look is logged once per message and tried again; requests still switch on their own."""

    def __init__(self, engine: Engine, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(engine, every), name="retrieval-refresh", daemon=True
        )
        self._thread.start()

    def _run(self, engine: Engine, every: float) -> None:
        said = ""
        while not self._stop.wait(every):
            try:
                engine.refresh(warm=True)
            except Exception as exc:  # the thread outlives a damaged or vanished index, and says so
                line = str(exc) if isinstance(exc, RetrievalError) else f"{type(exc).__name__}: {exc}"
                if line != said:
                    _log.warning("background refresh of index %r: %s", engine.name, line)
                    said = line
            else:
                said = ""

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


T = TypeVar("T")


class _HeavyGate:
    """At most `slots` heavy requests at once, each given at most `timeout` seconds.

    The work runs in the gate's own threads; a request with no free slot, or whose work runs past its time,
    gets a 503 with Retry-After at once. A slot is freed when its work really ends, not when its request
    gave up, so slow work cannot pile up behind the clients that stopped waiting for it.
    """

    def __init__(self, slots: int, timeout: float) -> None:
        self.slots, self.timeout = slots, timeout
        self._free = threading.BoundedSemaphore(slots)
        self._pool = ThreadPoolExecutor(slots, thread_name_prefix="retrieval-heavy")

    def run(self, work: Callable[[], T]) -> T:
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if not self._free.acquire(blocking=False):
            raise HTTPException(
                503, f"busy: {self.slots} image searches or maps are running; try again shortly", retry
            )
        try:
            future = self._pool.submit(work)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(lambda _done: self._free.release())
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            raise HTTPException(
                503,
                f"the request took longer than {self.timeout:g} s; ask for fewer results (n, expand)",
                retry,
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def warm_up(engine: Engine) -> None:
    """Kept for callers of earlier versions: `Engine.warm_up`."""
    engine.warm_up()


def _served(request: Request) -> _Served:
    return request.app.state.served


_DIGITS = re.compile(r"0|[1-9][0-9]*")


def _decimal(value: object) -> object:
    """Numbers in a URL are plain decimal digits: `01`, `+1`, `1.0` or ` 1` name no image, so they are
    refused rather than read as 1 (one image, one URL)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("write it in decimal digits (0, 1, 2, ...) without sign, leading zeros or fraction")
    return value


Digits = BeforeValidator(_decimal)
Served = Annotated[_Served, Depends(_served)]
ImageId = Annotated[
    int, PathParam(ge=0, le=MAX_ID, description="An image id from a search result.", examples=[1]), Digits
]
K = Annotated[int, QueryParam(ge=1, le=MAX_K, description="Number of results."), Digits]
Text = Annotated[str, QueryParam(min_length=1, max_length=MAX_QUERY_CHARS, description="Text query.")]
MapN = Annotated[int, QueryParam(ge=4, le=MAX_MAP_RESULTS, description="Number of results to map."), Digits]
MapExpand = Annotated[
    int,
    QueryParam(ge=0, le=MAX_MAP_EXPAND, description="Also map each result's nearest neighbours."),
    Digits,
]
Seed = Annotated[int, QueryParam(ge=0, le=2**31 - 1, description="Layout seed: one seed, one map."), Digits]
MapText = Annotated[
    str | None,
    QueryParam(min_length=1, max_length=MAX_QUERY_CHARS, description="Text query; give q or like, not both."),
]
MapLike = Annotated[
    int | None,
    QueryParam(ge=0, le=MAX_ID, description="An indexed image's id; give like or q, not both.", examples=[1]),
    Digits,
]
Upload = Annotated[
    UploadFile, File(description="An image file: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF.")
]


def _filter(
    folders: Annotated[
        list[str] | None,
        QueryParam(
            alias="in",
            max_length=100,
            description="Only images in this folder or below (relative to the indexed folder, or absolute); "
            "repeat for several (any of them).",
        ),
    ] = None,
    after: Annotated[
        str | None,
        QueryParam(
            max_length=40,
            description="Only photos taken (EXIF), else modified, on or after this day (YYYY-MM-DD).",
            examples=["2023-01-01"],
        ),
    ] = None,
    before: Annotated[
        str | None,
        QueryParam(
            max_length=40,
            description="Only photos taken (EXIF), else modified, before this day (YYYY-MM-DD).",
            examples=["2024-01-01"],
        ),
    ] = None,
    camera: Annotated[
        str | None,
        QueryParam(max_length=120, description="Only photos whose camera make or model contains this text."),
    ] = None,
    format: Annotated[
        str | None,
        QueryParam(max_length=200, description="Only these formats, comma-separated: jpeg,png,webp,heic,..."),
    ] = None,
    min_width: Annotated[
        str | None, QueryParam(max_length=12, description="Minimum width in pixels.")
    ] = None,
    min_height: Annotated[
        str | None, QueryParam(max_length=12, description="Minimum height in pixels.")
    ] = None,
    near: Annotated[
        str | None,
        QueryParam(
            max_length=60,
            description="Only photos taken near LAT,LON (EXIF GPS); with within_km.",
            examples=["48.86,2.35"],
        ),
    ] = None,
    within_km: Annotated[
        str | None, QueryParam(max_length=20, description="With near: the distance in km.")
    ] = None,
) -> Filter | None:
    """The filter query parameters as one Filter (read by the same parser as the CLI's options); a
    malformed value is a 422 naming it."""
    try:
        return parse_filter(
            folders=folders,
            after=after,
            before=before,
            camera=camera,
            formats=format,
            min_width=min_width,
            min_height=min_height,
            near=near,
            within_km=within_km,
            style="http",
        )
    except UsageError as exc:
        raise HTTPException(422, str(exc)) from None


Filters = Annotated[Filter | None, Depends(_filter)]

_ERROR_TEXT = {
    400: "A Host header naming another server (see --allowed-host), or a query the index cannot answer",
    401: "No token or a wrong one (a server started with --token)",
    404: "Unknown image id, or its file has gone or changed since it was indexed",
    411: "A chunked request body: send a Content-Length",
    413: "Request, upload or image too large",
    416: "A byte range outside the file",
    422: "Invalid parameter or unreadable image",
    503: "Busy with image searches or maps, or over the time limit (see Retry-After); or index unavailable",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorOut, "description": _ERROR_TEXT[status]} for status in statuses}


router = APIRouter(prefix="/api", responses=_errors(400, 401, 411, 413, 422, 503))


def _hits(query: Query, k: int, hits: list[SearchHit]) -> SearchOut:
    return SearchOut(
        query=query.describe(),
        k=k,
        results=[
            HitOut(
                id=h.id,
                rank=h.rank,
                score=round(h.score, 6),
                path=h.relative_path,
                width=h.width,
                height=h.height,
                format=h.format,
                captured_at=h.captured_at,
                copies=h.copies,
                thumbnail=f"/api/images/{h.id}/thumbnail",
                image=f"/api/images/{h.id}",
            )
            for h in hits
        ],
    )


def _relative(record: ImageRecord | None) -> str | None:
    if record is None:
        return None
    try:
        return str(Path(record.path).relative_to(record.root))
    except ValueError:
        return Path(record.path).name


def _map_out(served: _Served, m: NeighbourhoodMap) -> MapOut:
    records = served.engine.records([p.id for p in m.points if p.id is not None])
    return MapOut(
        title=m.title,
        trustworthiness=round(m.trustworthiness, 4) if m.points else None,
        clusters=m.clusters,
        perplexity=m.params.perplexity,
        seconds={k: round(v, 3) for k, v in m.seconds.items()},
        points=[
            MapPointOut(
                role=p.role,
                id=p.id,
                path=_relative(records.get(p.id)) if p.id is not None else None,
                x=round(p.x, 4),
                y=round(p.y, 4),
                score=round(p.score, 6),
                rank=p.rank,
                cluster=p.cluster,
                thumbnail=f"/api/images/{p.id}/thumbnail?size=small" if p.id is not None else None,
            )
            for p in m.points
        ],
    )


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the upload is larger than {limit // (1024 * 1024)} MB")
    return data


def _known(served: _Served, image_id: int) -> QueryPart:
    """The query part for an indexed image: 404 unless both its row and its vector exist."""
    served.record(image_id)
    if not served.engine.has_vector(image_id):
        raise HTTPException(404, f"no image with id {image_id} in index {served.engine.name!r}")
    return QueryPart("id", image_id)


@router.get("/health", summary="Liveness: the index is loaded")
def health(served: Served) -> HealthOut:
    return HealthOut(status="ok", index=served.engine.name, vectors=served.engine.status().stats.vectors)


@router.get("/stats", summary="Counts, model and sizes of the served index")
def stats(served: Served) -> StatsOut:
    status = served.engine.status()
    st = status.stats
    return StatsOut(
        index=st.name,
        model=st.model,
        embedder_id=st.embedder_id,
        dim=st.dim,
        text_search=status.text_search,
        random_weights=status.random_weights,
        images=st.counts["embedded"],
        files=st.counts["files"],
        folders=st.counts["roots"],
        failed_files=st.counts["failures"],
        vectors=st.vectors,
        generation=status.generation,
        bytes_on_disk=st.bytes_on_disk,
        limits={
            "max_k": MAX_K,
            "max_query_chars": MAX_QUERY_CHARS,
            "max_upload_bytes": served.max_upload_bytes,
            "max_map_results": MAX_MAP_RESULTS,
            "max_map_expand": MAX_MAP_EXPAND,
        },
    )


@router.get("/search", summary="Search by text (CLIP indexes)")
def search_text(served: Served, q: Text, flt: Filters, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(QueryPart("text", q))
    return _hits(query, k, served.engine.serve_search(query, k=k, filter=flt))


@router.post("/search/image", summary="Search by an uploaded example image")
def search_image(served: Served, image: Upload, flt: Filters, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(QueryPart("image", _read_upload(image, served.max_upload_bytes)))
    return _hits(query, k, served.heavy.run(lambda: served.engine.serve_search(query, k=k, filter=flt)))


@router.get(
    "/similar/{image_id}", summary="More like an indexed image (itself left out)", responses=_errors(404)
)
def similar(served: Served, image_id: ImageId, flt: Filters, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(_known(served, image_id))
    return _hits(query, k, served.engine.serve_search(query, k=k, filter=flt))


@router.get(
    "/map",
    summary="t-SNE map of a query's neighbourhood: give q (text) or like (an image id)",
    description="Give exactly one of `q` (a text) and `like` (an indexed image's id): both, or neither, "
    "is a 422. OpenAPI cannot state that two parameters exclude each other; this sentence does.",
    responses=_errors(404),
)
def map_query(
    served: Served,
    flt: Filters,
    q: MapText = None,
    like: MapLike = None,
    n: MapN = DEFAULT_K,
    expand: MapExpand = 0,
    seed: Seed = 0,
) -> MapOut:
    if (q is None) == (like is None):
        raise HTTPException(422, "give exactly one of q (text) or like (an image id)")
    part = QueryPart("text", q) if q is not None else _known(served, int(like))  # type: ignore[arg-type]
    query = Query.of(part)
    m = served.heavy.run(lambda: served.engine.serve_map(query, n=n, expand=expand, seed=seed, filter=flt))
    return _map_out(served, m)


@router.post("/map/image", summary="t-SNE map of an uploaded image's neighbourhood")
def map_image(
    served: Served, image: Upload, flt: Filters, n: MapN = DEFAULT_K, expand: MapExpand = 0, seed: Seed = 0
) -> MapOut:
    query = Query.of(QueryPart("image", _read_upload(image, served.max_upload_bytes)))
    m = served.heavy.run(lambda: served.engine.serve_map(query, n=n, expand=expand, seed=seed, filter=flt))
    return _map_out(served, m)


@router.get(
    "/images/{image_id}",
    summary="The original file of an indexed image (byte ranges supported)",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}}, 206: {"description": "A byte range"}, **_errors(404, 416)},
)
def original(served: Served, image_id: ImageId) -> FileResponse:
    record = served.record(image_id)
    path = served.engine.original(image_id)
    if path is None:
        raise HTTPException(
            404,
            f"the file of image {image_id} has gone or changed since it was indexed; run `retrieval ingest`",
        )
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(record.format, "application/octet-stream"),
        filename=Path(record.path).name,
        content_disposition_type="inline",
        headers={"Cache-Control": _PICTURE_CACHING},
    )


@router.get(
    "/images/{image_id}/thumbnail",
    summary="A JPEG thumbnail of an indexed image (small: 96 px, large: 256 px)",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}},
        304: {"description": "Unchanged since the ETag sent in If-None-Match"},
        **_errors(404),
    },
)
def thumbnail(
    request: Request,
    served: Served,
    image_id: ImageId,
    size: Literal["small", "large"] = "large",
) -> Response:
    served.record(image_id)
    data, digest = served.engine.thumbnail(image_id, THUMB_SIDES[size])
    # A deleted image's id can be reused by a new one: the content hash tells their thumbnails apart.
    etag = f'"{image_id}-{size}-{digest[:16]}"'
    headers = {"ETag": etag, "Cache-Control": _PICTURE_CACHING}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if data is None:
        raise HTTPException(404, f"the file of image {image_id} can no longer be read; re-run ingest")
    return Response(data, media_type="image/jpeg", headers=headers)


# -- errors ---------------------------------------------------------------------------------------------


def _status_for(exc: RetrievalError) -> int:
    if isinstance(exc, DecodeError):
        return 413 if "decompression" in exc.reason else 422
    if isinstance(exc, UsageError):  # QueryError too: a query this index cannot answer
        return 400
    if isinstance(exc, WeightsUnavailableError | IndexError_):
        return 503
    return 500


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def _retrieval_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RetrievalError)
    message = f"image rejected: {exc.reason}" if isinstance(exc, DecodeError) else str(exc)
    return _error(_status_for(exc), message)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = " ".join(str(part) for part in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg")))


async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
    return _error(500, "internal server error; see the server's log")


class _BodyLimit:
    """Refuse request bodies above `limit` bytes before they are read: by their Content-Length, and
    chunked ones (no length to check) outright. uvicorn never reads past a declared Content-Length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal = None
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                refusal = _error(411, "send the upload with a Content-Length")
            elif length is not None and (not length.isdigit() or int(length) > self.limit):
                refusal = _error(413, f"the request is larger than {self.limit // (1024 * 1024)} MB")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- who may ask ----------------------------------------------------------------------------------------


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name(value: str) -> str | None:
    """The name in a Host header (`photos.lan:8000` -> `photos.lan`, IPv6 in brackets), lowercased; None
    when it is no host name at all."""
    match = _HOST.fullmatch(value.strip().lower())
    return match.group(1) if match else None


def _listen_name(host: str) -> str:
    """An address to listen on, or a name to answer to, as a Host header carries it (IPv6 in brackets)."""
    name = host.strip().lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]" if _is_ip(name) else name
    parsed = _host_name(name)
    if parsed is None:
        raise UsageError(f"{host!r} is not a host name or address")
    return parsed


def _is_loopback(host: str) -> bool:
    name = host.strip().lower().strip("[]")
    return name == "localhost" or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


@dataclass(frozen=True)
class _Exposure:
    """The Host names the app answers to and the token its API wants."""

    names: frozenset[str]
    #: Listening on every address (0.0.0.0, ::): any IP literal may be the one a client used. That is no
    #: opening for DNS rebinding, which needs a page on a *name* the attacker controls.
    any_ip: bool
    token: str | None

    @classmethod
    def of(cls, host: str, allowed_hosts: Sequence[str], token: str | None) -> _Exposure:
        """Raises UsageError: a non-loopback address with neither allowed names nor a token (anyone on the
        network could read the photos, and nothing stops DNS rebinding), a bad name, or a weak token."""
        if token is not None and not _TOKEN.fullmatch(token):
            raise UsageError(
                "the token must be 16 to 512 letters, digits or ._~+/=- (no spaces or ;); make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        wildcard = host.strip() in _WILDCARDS
        if not _is_loopback(host) and not allowed_hosts and token is None:
            raise UsageError(
                f"listening on {host or 'every address'} lets anyone on the network in: give the names "
                "clients use with --allowed-host NAME, or require a token with --token ($RETRIEVAL_TOKEN)"
            )
        names = set(LOOPBACK_NAMES) | {_listen_name(name) for name in allowed_hosts}
        if not wildcard:
            names.add(_listen_name(host))
        return cls(frozenset(names), wildcard, token)

    def answers(self, host: str | None) -> bool:
        name = _host_name(host) if host else None
        return name is not None and (name in self.names or (self.any_ip and _is_ip(name)))

    def carries_token(self, headers: Headers) -> bool:
        assert self.token is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = cookie_parser(headers.get("cookie", "")).get(TOKEN_COOKIE, "")
        return self.matches(given.strip())

    def matches(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode(), self.token.encode())


class _Guard:
    """Before anything else: the Host header must name this server (else 400), and with a token every /api
    call must carry it (else 401). `GET /?token=T` answers with the token as an HttpOnly, SameSite=Strict
    cookie and a redirect to `/`, so the page, its fetches and its <img> all send it, no script can read it,
    other sites' requests go without it, and the token leaves the address bar."""

    def __init__(self, app: ASGIApp, exposure: _Exposure) -> None:
        self.app = app
        self.exposure = exposure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not self.exposure.answers(host):
            shown = (host or "")[:100]
            refusal = _error(
                400,
                f"this server does not answer to the name {shown!r} in the Host header: open it by the "
                "address it printed, or start it with --allowed-host NAME",
            )
            await refusal(scope, receive, send)
            return
        if self.exposure.token is not None:
            denied = self._token_refusal(scope, headers)
            if denied is not None:
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _token_refusal(self, scope: Scope, headers: Headers) -> Response | None:
        path = scope["path"]
        if path == "/":
            given = parse_qs(scope["query_string"].decode("latin-1")).get("token")
            if given is None:
                return None
            if not self.exposure.matches(given[0]):
                return _error(401, "wrong token: open the address `retrieval serve` printed")
            secure = "; Secure" if scope.get("scheme") == "https" else ""
            cookie = f"{TOKEN_COOKIE}={given[0]}; Path=/; HttpOnly; SameSite=Strict{secure}"
            return Response(status_code=303, headers={"Location": "/", "Set-Cookie": cookie})
        if (path == "/api" or path.startswith("/api/")) and not self.exposure.carries_token(headers):
            return _error(
                401,
                "this server needs its token: open the address `retrieval serve` printed (/?token=...), "
                "or send Authorization: Bearer TOKEN",
                {"WWW-Authenticate": "Bearer"},
            )
        return None


#: Headers of a text error kept when it is rewritten as JSON.
_KEPT = frozenset({b"content-range", b"retry-after", b"www-authenticate", b"allow"})


class _Headers:
    """Outermost: security headers on every answer, `Cache-Control: no-store` on API answers that set no
    caching of their own, and errors that Starlette renders as text (a bad Range) rewritten as one line of
    JSON like every other error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        if scope["path"].startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        text_error: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None

        async def checked(message: Message) -> None:
            nonlocal text_error
            if text_error is not None:
                status, kept, chunks = text_error
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    text = b"".join(chunks).decode("utf-8", "replace").strip()
                    reason = text if text and len(text) <= 200 else HTTPStatus(status).phrase
                    headers = {name.decode(): value.decode("latin-1") for name, value in kept}
                    await _error(status, reason, headers)(scope, receive, secured)
                return
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = message.get("headers", [])
                content_type = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                if not content_type.startswith(b"application/json"):
                    kept = [(k.lower(), v) for k, v in headers if k.lower() in _KEPT]
                    text_error = (message["status"], kept, [])
                    return
            await secured(message)

        await self.app(scope, receive, checked)


# -- uvicorn ----------------------------------------------------------------------------------------------


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers: a client that
    connects and sends nothing, or trickles its headers a byte at a time (slowloris), is disconnected after
    `header_timeout` seconds. uvicorn itself times out only idle connections after an answer, and any byte
    restarts that clock."""

    header_timeout = HEADER_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's line and headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(*, header_timeout: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that bound what one client can hold: the time
    to send a request's headers (`_HeaderDeadline`), their size (h11's limit: beyond, 400), idle keep-alive,
    and open connections (beyond `MAX_CONNECTIONS`, uvicorn answers 503 itself, in plain text)."""
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"header_timeout": header_timeout})
    return {
        "http": protocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": MAX_CONNECTIONS,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_graceful_shutdown": 5,
        "server_header": False,
    }


# -- the app --------------------------------------------------------------------------------------------


def create_app(
    engine: Engine | str = DEFAULT_INDEX,
    *,
    home: Path | str | None = None,
    device: str = "auto",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    token: str | None = None,
    max_heavy: int | None = None,
    heavy_timeout: float | None = None,
    refresh_every: float | None = None,
) -> FastAPI:
    """The ASGI app serving one index: JSON API under /api (its OpenAPI schema at /openapi.json), search page
    at /. FastAPI's /docs and /redoc pages are off: they load their scripts from a CDN.

    Args:
        engine: an open Engine (the caller closes it), or the name of an index under `home` that the app
            opens at startup and closes at shutdown.
        home: folder of the indexes, when `engine` is a name.
        device: "cpu", "cuda" or "auto", when `engine` is a name.
        max_upload_bytes: largest image upload accepted (413 above).
        host: the address the app is served on: the app answers to it, to loopback names and to
            `allowed_hosts` (names with or without a port) in the Host header, to nothing else (400).
        token: when given, every /api call must carry it (401 without); see `_Guard`.
        max_heavy: image searches and maps at once (default MAX_HEAVY); beyond, 503 with Retry-After.
        heavy_timeout: seconds one of them may take (default HEAVY_TIMEOUT_S); beyond, 503.
        refresh_every: seconds between the background refresh's looks for a new generation (default
            REFRESH_S; see `_Refresher`).

    Raises:
        UsageError: `host` is not loopback and neither `allowed_hosts` nor `token` is given; a malformed
            name; a token shorter than 16 characters or not cookie-safe; `max_heavy` below 1; `heavy_timeout`
            or `refresh_every` not positive.

    The model, quantizer and vectors load at startup (`warm_up`), so a missing index or unavailable
    weights stop the server from starting rather than failing its first request.
    """
    exposure = _Exposure.of(host, allowed_hosts, token)
    slots = MAX_HEAVY if max_heavy is None else max_heavy
    if slots < 1 or (heavy_timeout is not None and heavy_timeout <= 0):
        raise UsageError(
            f"max_heavy must be 1 or more and heavy_timeout positive, not {max_heavy}, {heavy_timeout}"
        )
    if refresh_every is not None and refresh_every <= 0:
        raise UsageError(f"refresh_every must be positive seconds, not {refresh_every}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(engine, Engine)
        opened = Engine(engine, home=home, device=device) if isinstance(engine, str) else engine
        heavy = _HeavyGate(slots, HEAVY_TIMEOUT_S if heavy_timeout is None else heavy_timeout)
        refresher = None
        try:
            opened.warm_up()
            refresher = _Refresher(opened, REFRESH_S if refresh_every is None else refresh_every)
            app.state.served = _Served(opened, max_upload_bytes, heavy)
            yield
        finally:
            if refresher is not None:
                refresher.close()
            heavy.close()
            if owned:
                opened.close()

    app = FastAPI(
        title="retrieval",
        summary="Search a photo collection by text, by example image, or for more like an indexed image.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(router)
    app.add_exception_handler(RetrievalError, _retrieval_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    # Added last is outermost: headers on every answer, then who may ask, then the size of what they send.
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_OVERHEAD)
    app.add_middleware(_Guard, exposure=exposure)
    app.add_middleware(_Headers)

    # The map viewer lives with the maps (the .html map inlines it); routed before the /static mount.
    @app.get("/static/map/{name}", include_in_schema=False)
    def viewer_file(name: str) -> FileResponse:
        if name not in MAP_VIEWER_FILES:
            raise HTTPException(404, "Not Found")
        return FileResponse(MAP_VIEWER_FILES[name])

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    return app

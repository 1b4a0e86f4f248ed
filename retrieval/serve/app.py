"""HTTP API and search page over one index: `create_app(engine)` is an ASGI app that `retrieval serve` runs.

The engine (database, vector store, model) is opened once when the app starts and kept warm. Route
handlers are plain functions, so Starlette runs them in its threadpool; they call only `Engine`'s public
methods, which take care of their own locking (see `Engine`). Each search first switches to the
newest generation of the vector store if another process (an ingest) saved one; generations are written
atomically, so a request sees the old index or the new one, never a half-written file.

Images are addressed by their integer id only: the file to send is looked up in the index's database, never
taken from the request. Paths in responses are relative to the indexed folder. Every error is one line of
JSON, `{"error": "..."}`, with a 4xx status for what the client can fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Request, UploadFile
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from retrieval.engine import (
    DEFAULT_INDEX,
    MAP_VIEWER_FILES,
    Engine,
    ImageRecord,
    NeighbourhoodMap,
    Query,
    QueryPart,
    SearchHit,
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
    trustworthiness: float = Field(description="How faithful the 2-D layout is to the neighbourhoods (0..1).")
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

    def record(self, image_id: int) -> ImageRecord:
        """The indexed image `image_id`, or a 404."""
        record = self.engine.record(image_id)
        if record is None:
            raise HTTPException(404, f"no image with id {image_id} in index {self.engine.name!r}")
        return record


def warm_up(engine: Engine) -> None:
    """Kept for callers of earlier versions: `Engine.warm_up`."""
    engine.warm_up()


def _served(request: Request) -> _Served:
    return request.app.state.served


Served = Annotated[_Served, Depends(_served)]
ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="An image id from a search result.")]
K = Annotated[int, QueryParam(ge=1, le=MAX_K, description="Number of results.")]
Text = Annotated[str, QueryParam(min_length=1, max_length=MAX_QUERY_CHARS, description="Text query.")]
MapN = Annotated[int, QueryParam(ge=4, le=MAX_MAP_RESULTS, description="Number of results to map.")]
MapExpand = Annotated[
    int, QueryParam(ge=0, le=MAX_MAP_EXPAND, description="Also map each result's nearest neighbours.")
]
Seed = Annotated[int, QueryParam(ge=0, le=2**31 - 1, description="Layout seed: one seed, one map.")]
Upload = Annotated[
    UploadFile, File(description="An image file: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF.")
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "A query the index cannot answer",
        404: "Unknown image id",
        413: "Upload or image too large",
        422: "Invalid parameter or unreadable image",
    }.items()
}

router = APIRouter(prefix="/api", responses=_ERRORS)


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
        trustworthiness=round(m.trustworthiness, 4),
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
def search_text(served: Served, q: Text, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(QueryPart("text", q))
    return _hits(query, k, served.engine.search(query, k=k))


@router.post("/search/image", summary="Search by an uploaded example image")
def search_image(served: Served, image: Upload, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(QueryPart("image", _read_upload(image, served.max_upload_bytes)))
    return _hits(query, k, served.engine.search(query, k=k))


@router.get("/similar/{image_id}", summary="More like an indexed image (itself left out)")
def similar(served: Served, image_id: ImageId, k: K = DEFAULT_K) -> SearchOut:
    query = Query.of(_known(served, image_id))
    return _hits(query, k, served.engine.search(query, k=k))


@router.get(
    "/map",
    summary="t-SNE map of a query's neighbourhood: give q (text) or like (an image id)",
)
def map_query(
    served: Served,
    q: Annotated[str | None, QueryParam(min_length=1, max_length=MAX_QUERY_CHARS)] = None,
    like: Annotated[int | None, QueryParam(ge=0, le=MAX_ID, description="An indexed image's id.")] = None,
    n: MapN = DEFAULT_K,
    expand: MapExpand = 0,
    seed: Seed = 0,
) -> MapOut:
    if (q is None) == (like is None):
        raise HTTPException(422, "give exactly one of q (text) or like (an image id)")
    part = QueryPart("text", q) if q is not None else _known(served, int(like))  # type: ignore[arg-type]
    m = served.engine.map(Query.of(part), n=n, expand=expand, seed=seed)
    return _map_out(served, m)


@router.post("/map/image", summary="t-SNE map of an uploaded image's neighbourhood")
def map_image(
    served: Served, image: Upload, n: MapN = DEFAULT_K, expand: MapExpand = 0, seed: Seed = 0
) -> MapOut:
    part = QueryPart("image", _read_upload(image, served.max_upload_bytes))
    m = served.engine.map(Query.of(part), n=n, expand=expand, seed=seed)
    return _map_out(served, m)


@router.get(
    "/images/{image_id}",
    summary="The original file of an indexed image",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}}},
)
def original(served: Served, image_id: ImageId) -> FileResponse:
    record = served.record(image_id)
    path = Path(record.path)
    if not path.is_file():
        raise HTTPException(404, f"the file of image {image_id} has gone; re-run `retrieval ingest`")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(record.format, "application/octet-stream"),
        filename=path.name,
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


@router.get(
    "/images/{image_id}/thumbnail",
    summary="A JPEG thumbnail of an indexed image (small: 96 px, large: 256 px)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
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
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
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


# -- the app --------------------------------------------------------------------------------------------


def create_app(
    engine: Engine | str = DEFAULT_INDEX,
    *,
    home: Path | str | None = None,
    device: str = "auto",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The ASGI app serving one index: JSON API under /api (its OpenAPI schema at /openapi.json), search page
    at /. FastAPI's /docs and /redoc pages are off: they load their scripts from a CDN.

    Args:
        engine: an open Engine (the caller closes it), or the name of an index under `home` that the app
            opens at startup and closes at shutdown.
        home: folder of the indexes, when `engine` is a name.
        device: "cpu", "cuda" or "auto", when `engine` is a name.
        max_upload_bytes: largest image upload accepted (413 above).

    The model, quantizer and vectors load at startup (`warm_up`), so a missing index or unavailable
    weights stop the server from starting rather than failing its first request.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(engine, Engine)
        opened = Engine(engine, home=home, device=device) if isinstance(engine, str) else engine
        try:
            opened.warm_up()
            app.state.served = _Served(opened, max_upload_bytes)
            yield
        finally:
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
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_OVERHEAD)

    # The map viewer lives with the maps (the .html map inlines it); routed before the /static mount.
    @app.get("/static/map/{name}", include_in_schema=False)
    def viewer_file(name: str) -> FileResponse:
        if name not in MAP_VIEWER_FILES:
            raise HTTPException(404, "Not Found")
        return FileResponse(MAP_VIEWER_FILES[name])

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app

"""The JSON API of the search app: routes, their pydantic shapes, and errors as JSON.

Ids are record URIs (``s3://bucket/key``, ``file:///path``): in paths they are sent
percent-encoded whole (``encodeURIComponent``). Every error is ``{"error", "status"}``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from imgrag.cli import config_error
from imgrag.errors import ConfigError, EmbeddingError, ImgragError, StoreError
from imgrag.filters import QueryFilters, parse_date
from imgrag.records import Hit
from imgrag.request import GroupBy
from imgrag.summarize import SummaryError

from .service import (
    MAX_K,
    THUMBNAIL_SIZES,
    ImageUnavailableError,
    NotFoundError,
    SearchParams,
    SearchResult,
    SearchService,
    Stats,
    TooLargeError,
)

SESSION_COOKIE = "imgrag_session"
_STATUS: dict[type[ImgragError], int] = {
    ConfigError: 400, NotFoundError: 404, TooLargeError: 413, EmbeddingError: 502,
    SummaryError: 502, ImageUnavailableError: 502, StoreError: 503,
}


class HitOut(BaseModel):
    rank: int
    id: str
    distance: float
    metadata: dict[str, Any]
    thumbnail_url: str
    times: list[float] = Field(default_factory=list, description="A video's other matching"
                               " frames, seconds (its best frame is the hit).")
    matched: list[str] | None = None  # with text matching: "vector", "text" or both
    snippet: str | None = None  # the OCR text around the match, matched words in [brackets]


class SearchOut(BaseModel):
    hits: list[HitOut]
    took_ms: float
    embedding_cached: bool
    upload_id: str | None = None


class RecordOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    thumbnail_url: str
    preview_url: str


class SourceOut(BaseModel):
    label: str
    id: str


class SummaryOut(BaseModel):
    model: str
    text: str
    sources: list[SourceOut]
    cited: list[str]


class ErrorOut(BaseModel):
    error: str
    status: int


def image_url(record_id: str, size: int) -> str:
    return f"/api/thumbnail/{quote(record_id, safe='')}?size={size}"


def hit_out(hit: Hit) -> HitOut:
    return HitOut(rank=hit.rank, id=hit.id, distance=hit.distance, metadata=hit.metadata,
                  thumbnail_url=image_url(hit.id, 256), times=hit.times, matched=hit.matched,
                  snippet=hit.snippet)


def search_out(result: SearchResult) -> SearchOut:
    return SearchOut(hits=[hit_out(h) for h in result.hits], took_ms=result.took_ms,
                     embedding_cached=result.embedding_cached, upload_id=result.upload_id)


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status, headers=headers)


def session_value(token: str) -> str:
    """The session cookie for a token: derived from it, never the token itself."""
    return hmac.new(token.encode(), b"imgrag-app-session", hashlib.sha256).hexdigest()


def search_params(
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of hits.")] = 24,
    prefix: Annotated[str | None, Query(description="Object key prefix, as in S3.")] = None,
    bucket: str | None = None,
    min_width: Annotated[int | None, Query(ge=1, description="Source width, px.")] = None,
    modified_after: Annotated[str | None, Query(
        description="YYYY-MM-DD or ISO 8601 (UTC unless a zone is given).")] = None,
    max_distance: Annotated[float | None, Query(ge=0, le=2,
                                                description="Cosine distance, at most.")] = None,
    group_by: Annotated[GroupBy, Query(description="video: one hit per video (its best"
                                       " frame); none: every frame is a hit.")] = "video",
    cutoff: Annotated[Literal["gap"] | None, Query(
        description="gap: drop the hits after the largest distance gap.")] = None,
    text_match: Annotated[Literal["auto", "on", "off"], Query(
        description="Fuse OCR text matches of the query's words (auto: when the "
        "collection has OCR text).")] = "auto",
) -> SearchParams:
    """The query-string filters of every search route (empty values mean no filter)."""
    try:
        filters = QueryFilters(prefix=prefix or None, bucket=bucket or None, min_width=min_width,
                               modified_after=parse_date(modified_after) if modified_after
                               else None)
        return SearchParams(k=k, filters=filters, max_distance=max_distance,
                            group_by=group_by, cutoff=cutoff, text_match=text_match)
    except ValidationError as exc:
        raise config_error(exc) from None


Params = Annotated[SearchParams, Depends(search_params)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 502, 503)}


def make_router(service: SearchService) -> APIRouter:
    """The ``/api`` routes over ``service``; a bearer token (or session cookie) is needed
    on each when the app has a token."""
    token = service.app_settings.token

    def authorized(request: Request) -> None:
        if token is None:
            return
        secret = token.get_secret_value()
        given = request.headers.get("authorization", "")
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if not (hmac.compare_digest(given.encode(), f"Bearer {secret}".encode())
                or hmac.compare_digest(cookie.encode(), session_value(secret).encode())):
            raise HTTPException(401, "a bearer token is needed (IMGRAG_APP_TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/api", dependencies=[Depends(authorized)], responses=ERRORS)

    @router.get("/search", response_model=SearchOut)
    def search(params: Params, q: str | None = None,
               upload: Annotated[str | None, Query(
                   description="An upload_id from POST /api/search/image.")] = None
               ) -> SearchOut:
        """Images nearest to a text (``q``), or to an image uploaded before (``upload``)."""
        if upload:
            return search_out(service.search_uploaded(upload, params))
        if not q or not q.strip():
            raise ConfigError("give a query text (q) or an upload id (upload)")
        return search_out(service.search_text(q, params))

    @router.post("/search/image", response_model=SearchOut)
    def search_image(params: Params, file: Annotated[UploadFile, File(
            description="An image; bounded in bytes and pixels, normalized as at ingest.")]
                     ) -> SearchOut:
        """Images nearest to an uploaded image (one Bedrock call, none for a repeat)."""
        limit = service.app_settings.max_upload_bytes
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise TooLargeError(f"the upload is larger than {limit} bytes")
        return search_out(service.search_upload(data, params))

    @router.get("/similar/{record_id:path}", response_model=SearchOut)
    def similar(record_id: str, params: Params) -> SearchOut:
        """Images nearest to a stored record, by its stored vector (no Bedrock call)."""
        return search_out(service.similar(record_id, params))

    @router.get("/record/{record_id:path}", response_model=RecordOut)
    def record(record_id: str) -> RecordOut:
        """One record's metadata, for the detail view."""
        hit = service.record(record_id)
        return RecordOut(id=hit.id, metadata=hit.metadata, thumbnail_url=image_url(hit.id, 256),
                         preview_url=image_url(hit.id, 1024))

    @router.get("/thumbnail/{record_id:path}", response_class=Response,
                responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(record_id: str, size: int = 256) -> Response:
        """A JPEG of a stored record, longest side ``size`` (128, 256, 512 or 1024)."""
        if size not in THUMBNAIL_SIZES:
            raise ConfigError(f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        thumb = service.thumbnail(record_id, size)
        return Response(thumb.data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @router.post("/summary", response_model=SummaryOut)
    def summary(params: Params, q: str, n: Annotated[int, Query(ge=1, le=8)] = 4
                ) -> SummaryOut:
        """An OpenAI vision summary of the top ``n`` hits of a text search."""
        result = service.summarize(q, params, n)
        return SummaryOut(model=result.model, text=result.text,
                          sources=[SourceOut(**s.model_dump()) for s in result.sources],
                          cited=result.cited)

    @router.get("/stats", response_model=Stats)
    def stats() -> Stats:
        """Records, model, dimension, and the last ingest run's summary."""
        return service.stats()

    return router


def session_route(service: SearchService) -> APIRouter:
    """``POST /api/session``: trade the bearer token for a cookie, so the page's images load."""
    router = APIRouter()
    token = service.app_settings.token

    @router.post("/api/session", status_code=204, responses=ERRORS)
    def session(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if token is None or not hmac.compare_digest(
                given.encode(), f"Bearer {token.get_secret_value()}".encode()):
            raise HTTPException(401, "wrong or missing token",
                                headers={"WWW-Authenticate": "Bearer"})
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, session_value(token.get_secret_value()),
                            httponly=True, samesite="strict")
        return response

    return router


def install_error_handlers(app: Any) -> None:
    """Every error as ``{"error", "status"}`` with the status its kind calls for."""

    async def imgrag_error(request: Request, exc: Exception) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
        return error_response(status, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return error_response(400, f"invalid {where}: {first['msg']}")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(ImgragError, imgrag_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)

"""The search app as an ASGI application: the page, its static files, the API, and the
headers that keep the page to its own assets.

Every response carries a Content-Security-Policy that allows scripts, styles, images and
requests from the app itself only (no inline script or style, nothing remote); the page
builds its DOM with ``textContent``, so keys holding HTML or quotes show as text. Requests
for another Host than the app's own are refused (DNS rebinding) unless it serves publicly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgrag.errors import ConfigError

from .api import install_error_handlers, make_router, session_route
from .service import SearchService, summaries_available

STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
UPLOAD_PATH = "/api/search/image"
_MULTIPART_SLACK = 64 * 1024  # part headers and boundaries around the file


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, has_token: bool, allow_public: bool) -> None:
    """ConfigError for a non-loopback address without a token, unless ``allow_public``."""
    if not is_loopback(host) and not has_token and not allow_public:
        raise ConfigError(f"refusing to listen on {host} without a token: set IMGRAG_APP_TOKEN,"
                          " or pass --allow-public to serve the collection to anyone who can"
                          " reach this address")


class SecurityHeaders:
    """Adds the CSP and its companions to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class UploadLimit:
    """Refuses an upload before its body is read: 411 without a Content-Length, 413 above
    the limit (the server never reads past a declared length)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit + _MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == UPLOAD_PATH:
            length = dict(scope["headers"]).get(b"content-length")
            status, message = 0, ""
            if length is None or not length.isdigit():
                status, message = 411, "the upload needs a Content-Length"
            elif int(length) > self.limit:
                status, message = 413, f"the upload is larger than {self.limit} bytes"
            if status:
                response = JSONResponse({"error": message, "status": status}, status)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(service: SearchService, allowed_hosts: Sequence[str] = ("*",)) -> FastAPI:
    """The app over ``service``; ``allowed_hosts`` are the Host names it answers to."""
    app = FastAPI(
        title="imgrag search", version="1",
        description="Search an imgrag collection by text, by example image or by a stored "
        "record. Errors are JSON: {error, status}.",
        docs_url=None, redoc_url=None,  # their pages load remote scripts: /docs is ours
    )
    install_error_handlers(app)
    app.include_router(session_route(service))
    app.include_router(make_router(service))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """200 when the collection can be read, else 503 with the reason."""
        stats = service.stats()
        return JSONResponse({"status": "ok", "records": stats.records})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/api/config", include_in_schema=False)
    def config() -> dict[str, bool]:
        """What the page needs before it asks anything: a token? summaries?"""
        return {"token": service.app_settings.token is not None,
                "summaries": summaries_available()}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(UploadLimit, limit=service.app_settings.max_upload_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app

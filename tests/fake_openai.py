"""A fake OpenAI Chat Completions endpoint for tests: a stdlib HTTP server on loopback.

Reached with ``OPENAI_BASE_URL=<fake.url>`` and ``OPENAI_API_KEY=test``. It serves
``POST /v1/chat/completions`` only and checks what a vision request must carry: the key,
a model, messages, and ``image_url`` parts whose URLs are ``data:image/jpeg;base64,…``
of real JPEG bytes. A valid request gets a canned completion that cites the first two
labels (``S1``…) it was shown; an invalid one gets OpenAI's 400 error shape. Errors can
be queued with :meth:`FakeOpenAI.fail_next` (429 rate limit, 400 bad request, …).

A request with a ``json_schema`` response format (re-ranking) is answered with JSON of
that schema: ``ranker(query, labels, images)`` gives the (label, reason) order (default:
the labels reversed); ``rerank_content`` replaces the answer text (a malformed answer).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

API_KEY = "test"
_LABEL = re.compile(r"^S\d+$")
_ERRORS: dict[int, dict[str, Any]] = {
    429: {
        "message": "Rate limit reached for gpt-5.4-mini in organization org-test on requests "
        "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded",
    },
    400: {"message": "Invalid image.", "type": "invalid_request_error", "param": None,
          "code": "invalid_image"},
    401: {"message": "Incorrect API key provided: wrong. You can find your API key at "
          "https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
          "param": None, "code": "invalid_api_key"},
    500: {"message": "The server had an error while processing your request.",
          "type": "server_error", "param": None, "code": None},
}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def check_request(body: Any) -> tuple[str, list[str], list[bytes]]:
    """(query text, labels, JPEG images) of a valid vision request; RequestError otherwise."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise RequestError(400, "you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty array", "messages")
    texts: list[str] = []
    images: list[bytes] = []
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant", "developer"):
            raise RequestError(400, f"invalid role {message.get('role')!r}", "messages")
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "text":
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                url = part.get("image_url", {}).get("url", "")
                prefix = "data:image/jpeg;base64,"
                if not url.startswith(prefix):
                    raise RequestError(400, "image_url must be a JPEG data URL", "messages")
                try:
                    data = base64.b64decode(url[len(prefix):], validate=True)
                except binascii.Error:
                    raise RequestError(400, "Invalid image.", "messages") from None
                if not data.startswith(b"\xff\xd8"):
                    raise RequestError(400, "Invalid image.", "messages")
                images.append(data)
            else:
                raise RequestError(400, f"unknown content part {part.get('type')!r}")
    if not images:
        raise RequestError(400, "no image_url part in the request", "messages")
    labels = [t.strip() for t in texts if _LABEL.match(t.strip())]
    return (texts[0] if texts else ""), labels, images


class FakeOpenAI:
    """The fake server; ``requests`` holds every parsed request body, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.ranker: Callable[[str, list[str], list[bytes]], list[tuple[str, str]]] = (
            lambda query, labels, images: [(lb, f"{lb} looks relevant") for lb in labels[::-1]])
        self.rerank_content: str | None = None
        self._faults: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(self, status: int, n: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next ``n`` requests get ``status`` with OpenAI's error body for it."""
        with self._lock:
            self._faults.extend([(status, headers or {})] * n)

    def handle(self, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], Any]:
        if path != "/v1/chat/completions":
            return 404, {}, {"error": {"message": f"Invalid URL (POST {path})",
                                       "type": "invalid_request_error", "param": None,
                                       "code": None}}
        if headers.get("Authorization") != f"Bearer {API_KEY}":
            return 401, {}, {"error": _ERRORS[401]}
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return 400, {}, {"error": {**_ERRORS[400], "message": "We could not parse the "
                                       "JSON body of your request.", "code": None}}
        with self._lock:
            self.requests.append(body)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            status, extra = fault
            return status, extra, {"error": _ERRORS[status]}
        try:
            query, labels, images = check_request(body)
        except RequestError as exc:
            return exc.status, {}, {"error": {"message": exc.message,
                                              "type": "invalid_request_error",
                                              "param": exc.param, "code": None}}
        if (body.get("response_format") or {}).get("type") == "json_schema":
            text = self.rerank_content or json.dumps({"ranking": [
                {"label": label, "reason": reason}
                for label, reason in self.ranker(query, labels, images)]})
        else:
            cited = " and ".join(f"[{label}]" for label in labels[:2]) or "none"
            text = f"Best matches: {cited}. ({query.splitlines()[0] if query else ''})"
        return 200, {}, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text,
                                     "refusal": None}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, payload = self.server.fake.handle(self.path, self.headers, raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass

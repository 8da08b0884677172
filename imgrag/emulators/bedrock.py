"""EMULATOR of Amazon Bedrock Runtime ``InvokeModel`` for Titan Multimodal Embeddings G1.

This is a fake HTTP endpoint for tests, demos and benchmarks. It is NOT a model: its
embeddings are deterministic colour histograms projected onto fixed random "concept"
directions, good enough for a text query "red" to rank red images first, and nothing more.

Real boto3 ``bedrock-runtime`` clients reach it through ``endpoint_url=fb.url`` or the
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` environment variable, so boto3's own request signing,
retries and error parsing all run unchanged. It speaks ``POST /model/{modelId}/invoke``
with Titan's request/response JSON, enforces Titan's input limits (the strictest documented
values by default: image <= 5 MB, <= 2048 px per side, PNG/JPEG; text <= 256 tokens) and
answers errors the way the service does: status code + ``x-amzn-ErrorType`` header + JSON
body ``{"message": ...}``.

Test knobs: per-call latency (+ jitter), a token-bucket request quota (429
``ThrottlingException``), fault injection (:meth:`FakeBedrock.fail_next`,
:meth:`FakeBedrock.fail_when`) and thread-safe counters (:attr:`FakeBedrock.stats`), also
served as JSON on ``GET /_emulator/stats`` (``POST /_emulator/reset`` resets them).

CLI: ``python -m imgrag.emulators.bedrock --port 0 --latency-ms 50 --quota-rps 20`` prints
``fake-bedrock listening on http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

__all__ = [
    "COLOUR_CONCEPTS",
    "ERROR_STATUS",
    "MODEL_ID",
    "BedrockError",
    "EmulatorStats",
    "FakeBedrock",
    "count_tokens",
    "embed_image",
    "embed_text",
    "main",
]

MODEL_ID = "amazon.titan-embed-image-v1"
EMBEDDING_LENGTHS = (256, 384, 1024)
DEFAULT_EMBEDDING_LENGTH = 1024
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 2048
MAX_TEXT_TOKENS = 256  # AWS model page (older copies: 128)
# Pillow reports some camera JPEGs (multi-picture) as "MPO"; they are JPEG files.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO"})
MAX_BODY_BYTES = 64 * 1024 * 1024

#: Error code -> HTTP status, as in the bedrock-runtime service model.
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}

THROTTLE_MESSAGE = "Too many requests, please wait before trying again."
_DEFAULT_MESSAGES: dict[str, str] = {
    "ThrottlingException": THROTTLE_MESSAGE,
    "ModelTimeoutException": "Model has timed out in processing the request.",
    "ServiceUnavailableException": "Service unavailable. Try your request again.",
    "InternalServerException": "The server encountered an internal error.",
    "ResourceNotFoundException": "Could not resolve the foundation model from the provided "
    "model identifier.",
    "ValidationException": "Malformed input request, please reformat your input and try again.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "ModelNotReadyException": "Model is not ready to serve inference requests.",
}

COLOUR_CONCEPTS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan", "blue",
    "purple", "pink", "white", "black", "gray", "brown",
)  # fmt: skip
_CONCEPT_INDEX = {name: i for i, name in enumerate(COLOUR_CONCEPTS)}
#: Words recognised in text queries (case-insensitive, whole words) -> concept.
COLOUR_WORDS: dict[str, str] = {name: name for name in COLOUR_CONCEPTS} | {
    "grey": "gray", "violet": "purple", "magenta": "purple", "crimson": "red",
    "scarlet": "red", "navy": "blue", "azure": "blue", "teal": "cyan", "turquoise": "cyan",
    "lime": "green", "gold": "yellow", "golden": "yellow",
}  # fmt: skip
_COLOUR_RE = re.compile(
    r"\b(" + "|".join(sorted(COLOUR_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE
)
# Labels of the HSV rules in colour_fractions, in order (first match wins; default pink).
_RULE_LABELS = (
    "black", "white", "gray", "pink", "brown", "red",
    "orange", "yellow", "green", "cyan", "blue", "purple",
)  # fmt: skip
# A CJK character is a token of its own; other words and punctuation marks one each.
_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_INVOKE_RE = re.compile(r"^/model/([^/]+)/invoke$")
CONTENT_WEIGHT = 0.15  # weight of the per-input hashed component
THUMBNAIL_SIDE = 64


class BedrockError(Exception):
    """A service error: sent as status + ``x-amzn-ErrorType`` header + ``{"message"}``."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None) -> None:
        self.code = code
        self.message = message or _DEFAULT_MESSAGES.get(code, code)
        self.status = status if status is not None else ERROR_STATUS.get(code, 400)
        super().__init__(f"{code} ({self.status}): {self.message}")


def _validation(message: str) -> BedrockError:
    return BedrockError("ValidationException", message)


@dataclasses.dataclass
class EmulatorStats:
    """Counters of ``/model/.../invoke`` requests (snapshot; see :attr:`FakeBedrock.stats`)."""

    requests: int = 0  # all invoke requests, whatever the outcome
    image_calls: int = 0  # 200s for requests with an image (image-only or image+text)
    text_calls: int = 0  # 200s for text-only requests
    throttled: int = 0  # 429s sent (quota or injected)
    errors: int = 0  # other non-200s
    max_inflight: int = 0  # peak concurrent invoke requests since start/reset

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- embeddings


def count_tokens(text: str) -> int:
    """Approximate token count: words, CJK characters and punctuation marks."""
    return len(_TOKEN_RE.findall(text))


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


@lru_cache(maxsize=16)
def _concept_matrix(dim: int) -> np.ndarray:
    """Rows: one fixed unit vector per colour concept (seeded by name and dim)."""
    m = np.stack(
        [_unit(np.random.default_rng(_seed("concept", c, dim)), dim) for c in COLOUR_CONCEPTS]
    )
    m.setflags(write=False)
    return m


def _hashed_unit(kind: str, data: bytes, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(kind.encode() + b"\x00" + data).digest()[:8], "little")
    return _unit(np.random.default_rng(seed), dim)


def _normalise(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def colour_fractions(image: Image.Image) -> np.ndarray:
    """Fraction of pixels in each of :data:`COLOUR_CONCEPTS` (HSV rules), summing to 1."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32) / 255.0
    h, s, v = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    reddish = (h < 15) | (h >= 345)
    idx = _CONCEPT_INDEX
    conditions = [
        v < 0.2,
        (s < 0.2) & (v > 0.85),
        s < 0.2,
        reddish & (s < 0.5) & (v > 0.7),
        ((h >= 15) & (h < 50) & (v < 0.6)) | ((reddish | (h < 50)) & (v < 0.7) & (s < 0.9)),
        reddish,
        h < 45,
        h < 70,
        h < 160,
        h < 200,
        h < 260,
        h < 315,
    ]
    choices = [idx[c] for c in _RULE_LABELS]
    labels = np.select(conditions, choices, default=idx["pink"])
    counts = np.bincount(labels.ravel(), minlength=len(COLOUR_CONCEPTS)).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def embed_image(image: Image.Image, raw: bytes, dim: int) -> np.ndarray:
    """Unit vector: colour fractions x concept directions + a small hash-of-bytes component."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    v = colour_fractions(thumb) @ _concept_matrix(dim)
    return _normalise(v + CONTENT_WEIGHT * _hashed_unit("image", raw, dim))


def embed_text(text: str, dim: int) -> np.ndarray:
    """Unit vector: sum of the concepts of colour words in *text* + a hash-of-text component."""
    concepts = sorted({COLOUR_WORDS[m.lower()] for m in _COLOUR_RE.findall(text)})
    v = _hashed_unit("text", text.encode(), dim)
    if concepts:
        m = _concept_matrix(dim)
        v = m[[_CONCEPT_INDEX[c] for c in concepts]].sum(axis=0) + CONTENT_WEIGHT * v
    return _normalise(v)


# --------------------------------------------------------------------------- validation


class _Request(NamedTuple):
    text: str | None
    image_b64: str | None
    dim: int


def _type_name(value: object) -> str:
    return {
        dict: "JSONObject",
        list: "JSONArray",
        str: "String",
        bool: "Boolean",
        int: "Integer",
        float: "Number",
        type(None): "Null",
    }.get(type(value), "Unknown")


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _validation(
                f"Malformed input request: {where}: extraneous key [{key}] is "
                "not permitted, please reformat your input and try again."
            )


def _parse_body(body: Any) -> _Request:
    """Validate a decoded Titan Multimodal Embeddings request body."""
    if not isinstance(body, dict):
        raise _validation(
            f"Malformed input request: #: expected type: JSONObject, found: "
            f"{_type_name(body)}, please reformat your input and try again."
        )
    _check_keys(body, {"inputText", "inputImage", "embeddingConfig"}, "#")
    for key in ("inputText", "inputImage"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _validation(
                f"Malformed input request: #/{key}: expected type: String, found: "
                f"{_type_name(body[key])}, please reformat your input and try "
                "again."
            )
    text = body.get("inputText") or None
    image = body.get("inputImage") or None
    if text is None and image is None:
        raise _validation(
            "Malformed input request: at least one of inputText or inputImage "
            "is required, please reformat your input and try again."
        )
    dim = DEFAULT_EMBEDDING_LENGTH
    config = body.get("embeddingConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise _validation(
                "Malformed input request: #/embeddingConfig: expected type: "
                f"JSONObject, found: {_type_name(config)}, please reformat your "
                "input and try again."
            )
        _check_keys(config, {"outputEmbeddingLength"}, "#/embeddingConfig")
        length = config.get("outputEmbeddingLength", DEFAULT_EMBEDDING_LENGTH)
        if isinstance(length, bool) or length not in EMBEDDING_LENGTHS:
            raise _validation(
                "Malformed input request: #/embeddingConfig/outputEmbeddingLength:"
                f" {json.dumps(length)} is not a valid enum value, please reformat"
                " your input and try again."
            )
        dim = int(length)
    return _Request(text, image, dim)


def _decode_image(b64: str, max_bytes: int, max_side: int) -> tuple[bytes, Image.Image]:
    """Base64 -> bytes -> header-only ``Image.open`` with Titan's checks; thumbnail for speed."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _validation("Unable to process provided image: invalid base64 encoding.") from None
    if not raw:
        raise _validation("Unable to process provided image: empty image.")
    if len(raw) > max_bytes:
        raise _validation(f"Image exceeds max size allowed: {len(raw)} bytes > {max_bytes} bytes.")
    try:
        image = Image.open(io.BytesIO(raw))  # lazy: reads the header only
    except Image.DecompressionBombError:
        raise _validation("Image exceeds max pixels allowed") from None
    except Exception:  # any failure to identify the image is a client error
        raise _validation("Unable to process provided image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise _validation(
            f"Unsupported image format: {image.format}. Supported formats are PNG and JPEG."
        )
    width, height = image.size
    if width > max_side or height > max_side:
        raise _validation("Image exceeds max pixels allowed")
    try:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced scale
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        image = image.convert("RGB")
    except Exception:  # truncated/corrupt pixel data
        raise _validation("Unable to process provided image") from None
    return raw, image


# --------------------------------------------------------------------------- server


class _Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    hdrs = {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())}
    hdrs.update(headers or {})
    return _Response(status, hdrs, json.dumps(payload).encode())


def _error_response(err: BedrockError) -> _Response:
    return _json_response(err.status, {"message": err.message}, {"x-amzn-ErrorType": err.code})


FailPredicate = Callable[[dict[str, Any]], "str | None"]


class FakeBedrock:
    """Fake Bedrock Runtime endpoint serving Titan Multimodal Embeddings G1 (an EMULATOR).

    ``latency_ms`` (+ uniform ``jitter_ms``) is slept by every invoke request except 429s.
    ``quota_rps`` enables a token bucket of ``burst`` tokens (default: one second's worth,
    at least 1) refilled at ``quota_rps``/s; a request finding it empty gets an immediate
    429 ``ThrottlingException``. Limits default to Titan's strictest documented values.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        quota_rps: float | None = None,
        *,
        jitter_ms: float = 0.0,
        burst: float | None = None,
        model_ids: Sequence[str] = (MODEL_ID,),
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_image_side: int = MAX_IMAGE_SIDE,
        max_text_tokens: int = MAX_TEXT_TOKENS,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.latency_ms = float(latency_ms)
        self.jitter_ms = float(jitter_ms)
        self.model_ids = frozenset(model_ids)
        self.max_image_bytes = max_image_bytes
        self.max_image_side = max_image_side
        self.max_text_tokens = max_text_tokens
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stats = EmulatorStats()
        self._inflight = 0
        self._faults: deque[tuple[str, str | None, int | None]] = deque()
        self._fail_when: FailPredicate | None = None
        self.quota_rps: float | None = None
        self._capacity = 0.0
        self._tokens = 0.0
        self._refilled_at = time.monotonic()
        self.set_quota(quota_rps, burst)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("FakeBedrock already started")
        server = _Server((self.host, self._requested_port), _Handler)
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-bedrock:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (in-flight handler threads are not joined)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Bound port once started (else the requested one)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeBedrock not started")
        return f"http://{self.host}:{self.port}"

    # -- knobs -----------------------------------------------------------------------

    def set_quota(self, quota_rps: float | None, burst: float | None = None) -> None:
        """(Re)configure the token bucket; ``None`` = unlimited. The bucket starts full."""
        if quota_rps is not None and quota_rps <= 0:
            raise ValueError("quota_rps must be > 0 or None")
        with self._lock:
            self.quota_rps = None if quota_rps is None else float(quota_rps)
            cap = burst if burst is not None else max(1.0, quota_rps or 0.0)
            self._capacity = float(cap)
            self._tokens = self._capacity
            self._refilled_at = time.monotonic()

    def fail_next(
        self,
        n: int = 1,
        code: str = "ThrottlingException",
        message: str | None = None,
        status: int | None = None,
    ) -> None:
        """Make the next *n* invoke requests fail with error *code* (status from the code)."""
        if status is None and code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {code!r}; pass status= explicitly")
        with self._lock:
            self._faults.extend([(code, message, status)] * n)

    def fail_when(self, predicate: FailPredicate | None) -> None:
        """Fail requests whose JSON body makes ``predicate(body)`` return an error code."""
        with self._lock:
            self._fail_when = predicate

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_when = None

    # -- observability ---------------------------------------------------------------

    @property
    def stats(self) -> EmulatorStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = EmulatorStats(max_inflight=self._inflight)

    # -- request handling ------------------------------------------------------------

    def _take_token(self) -> bool:
        with self._lock:
            if self.quota_rps is None:
                return True
            now = time.monotonic()
            self._tokens = min(
                self._capacity, self._tokens + (now - self._refilled_at) * self.quota_rps
            )
            self._refilled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def _sleep(self) -> None:
        delay = self.latency_ms + (random.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0)
        if delay > 0:
            time.sleep(delay / 1000.0)

    def _model_known(self, model_id: str) -> bool:
        if model_id in self.model_ids:
            return True
        # foundation-model ARN: arn:aws:bedrock:<region>::foundation-model/<id>
        prefix, _, tail = model_id.rpartition("foundation-model/")
        return prefix.startswith("arn:") and tail in self.model_ids

    def route(self, method: str, path: str, body: bytes) -> _Response:
        """Dispatch one HTTP request (used by the handler; callable directly in tests)."""
        path = urlsplit(path).path
        match = _INVOKE_RE.match(path)
        if match and method == "POST":
            return self._invoke(unquote(match.group(1)), body)
        if path == "/_emulator/stats" and method == "GET":
            return _json_response(200, self.stats.as_dict() | {"inflight": self.inflight})
        if path == "/_emulator/reset" and method == "POST":
            self.reset_stats()
            return _json_response(200, self.stats.as_dict())
        if path == "/_emulator/fail_next" and method == "POST":
            try:
                spec = json.loads(body or b"{}")
                self.fail_next(
                    int(spec.get("n", 1)),
                    spec.get("code", "ThrottlingException"),
                    spec.get("message"),
                    spec.get("status"),
                )
            except (ValueError, TypeError, AttributeError) as exc:
                return _error_response(_validation(str(exc)))
            return _json_response(200, {})
        return _error_response(
            BedrockError("UnknownOperationException", f"Unknown operation {method} {path}", 404)
        )

    def _invoke(self, model_id: str, body: bytes) -> _Response:
        with self._lock:
            self._stats.requests += 1
            self._inflight += 1
            self._stats.max_inflight = max(self._stats.max_inflight, self._inflight)
            fault = self._faults.popleft() if self._faults else None
        try:
            response, kind = self._process(fault, model_id, body)
        except BedrockError as err:
            response, kind = _error_response(err), None
        except Exception as exc:  # a bug here must still answer HTTP
            err = BedrockError("InternalServerException", f"Emulator error: {exc!r}")
            response, kind = _error_response(err), None
        with self._lock:
            self._inflight -= 1
            if response.status == 200:
                if kind == "image":
                    self._stats.image_calls += 1
                else:
                    self._stats.text_calls += 1
            elif response.status == 429:
                self._stats.throttled += 1
            else:
                self._stats.errors += 1
        return response

    def _process(
        self, fault: tuple[str, str | None, int | None] | None, model_id: str, body: bytes
    ) -> tuple[_Response, str]:
        if fault is not None:
            err = BedrockError(*fault)
            if err.status != 429:
                self._sleep()
            raise err
        if not self._take_token():
            raise BedrockError("ThrottlingException", THROTTLE_MESSAGE)
        self._sleep()
        return self._embed(model_id, body)

    def _embed(self, model_id: str, body: bytes) -> tuple[_Response, str]:
        started = time.monotonic()
        if not self._model_known(model_id):
            raise BedrockError("ResourceNotFoundException")
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _validation(
                "Malformed input request, please reformat your input and try again."
            ) from None
        predicate = self._fail_when
        if predicate is not None and isinstance(decoded, dict):
            code = predicate(decoded)
            if code:
                raise BedrockError(code)
        req = _parse_body(decoded)
        tokens = 0
        vectors = []
        if req.text is not None:
            tokens = count_tokens(req.text)
            if tokens > self.max_text_tokens:
                raise _validation(
                    f"Malformed input request: inputText has {tokens} tokens, "
                    f"max allowed is {self.max_text_tokens}, please reformat "
                    "your input and try again."
                )
        if req.image_b64 is not None:
            raw, image = _decode_image(req.image_b64, self.max_image_bytes, self.max_image_side)
            vectors.append(embed_image(image, raw, req.dim))
        if req.text is not None:
            vectors.append(embed_text(req.text, req.dim))
        vector = _normalise(np.mean(vectors, axis=0)) if len(vectors) > 1 else vectors[0]
        payload = {"embedding": vector.tolist(), "inputTextTokenCount": tokens, "message": None}
        elapsed_ms = int((time.monotonic() - started) * 1000 + self.latency_ms)
        headers = {
            "X-Amzn-Bedrock-Invocation-Latency": str(elapsed_ms),
            "X-Amzn-Bedrock-Input-Token-Count": str(tokens),
        }
        return _json_response(200, payload, headers), ("image" if req.image_b64 else "text")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    emulator: FakeBedrock

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # client went away (e.g. timeout): not our problem
        if self.emulator.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    disable_nagle_algorithm = True  # else header/body writes hit the 40 ms delayed-ACK stall
    server_version = "FakeBedrock/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                _error_response(_validation("Request body too large or invalid Content-Length."))
            )
            return
        body = self.rfile.read(length) if length else b""
        self._send(self.server.emulator.route(self.command, self.path, body))

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m imgrag.emulators.bedrock",
        description="Fake Bedrock Runtime (Titan Multimodal Embeddings G1) EMULATOR for tests, "
        "demos and benchmarks. Not a model.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = ephemeral (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--quota-rps", type=float, default=None, help="default: unlimited")
    parser.add_argument("--burst", type=float, default=None, help="bucket size (default: 1 s)")
    parser.add_argument("--max-text-tokens", type=int, default=MAX_TEXT_TOKENS)
    parser.add_argument("--max-image-bytes", type=int, default=MAX_IMAGE_BYTES)
    parser.add_argument("--max-image-side", type=int, default=MAX_IMAGE_SIDE)
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    fb = FakeBedrock(
        args.host,
        args.port,
        args.latency_ms,
        args.quota_rps,
        jitter_ms=args.jitter_ms,
        burst=args.burst,
        max_text_tokens=args.max_text_tokens,
        max_image_bytes=args.max_image_bytes,
        max_image_side=args.max_image_side,
        verbose=args.verbose,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    fb.start()
    print(f"fake-bedrock listening on {fb.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fb.stop()
        print(f"fake-bedrock stats {json.dumps(fb.stats.as_dict())}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

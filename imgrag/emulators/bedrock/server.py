"""EMULATOR of Amazon Bedrock: InvokeModel for three embedding models, and the batch
inference control plane.

This is a fake HTTP endpoint for tests, demos and benchmarks. It is NOT a model: its
embeddings are deterministic colour histograms projected onto fixed random "concept"
directions (``common.py``), good enough for a text query "red" to rank red images first,
and nothing more. Each model's wire format lives in its own module (``titan.py``,
``nova.py``, ``cohere.py``); the batch jobs in ``batch.py``.

Real boto3 clients reach it through ``endpoint_url=fb.url`` or the environment:
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` (``POST /model/{modelId}/invoke``) and
``AWS_ENDPOINT_URL_BEDROCK`` (``/model-invocation-job...``), so boto3's own request signing,
retries and error parsing all run unchanged. Errors are answered the way the service does:
status code + ``x-amzn-ErrorType`` header + JSON body ``{"message": ...}``. Titan's limits
are knobs (the strictest documented values by default: image <= 5 MB, <= 2048 px per side,
PNG/JPEG; text <= 256 tokens); the other models' are their documented ones.

Test knobs: per-call latency (+ jitter), a token-bucket request quota shared by all models
(429 ``ThrottlingException``), fault injection (:meth:`FakeBedrock.fail_next`,
:meth:`FakeBedrock.fail_when`) and thread-safe counters (:attr:`FakeBedrock.stats`), also
served as JSON on ``GET /_emulator/stats`` (``POST /_emulator/reset`` resets them).

CLI: ``python -m imgrag.emulators.bedrock --port 0 --latency-ms 50 --quota-rps 20`` prints
``fake-bedrock listening on http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit

from imgrag.emulators.bedrock import cohere, nova, titan
from imgrag.emulators.bedrock.batch import BatchJobs
from imgrag.emulators.bedrock.common import (
    ERROR_STATUS,
    THROTTLE_MESSAGE,
    Answer,
    BedrockError,
    Limits,
    validation,
)

MODELS: dict[str, ModuleType] = {m.MODEL_ID: m for m in (titan, nova, cohere)}
MAX_BODY_BYTES = 64 * 1024 * 1024
_INVOKE_RE = re.compile(r"^/model/([^/]+)/invoke$")
_JOB_RE = re.compile(r"^/model-invocation-job/([^/]+)(/stop)?$")


@dataclasses.dataclass
class EmulatorStats:
    """Counters of ``/model/.../invoke`` requests (snapshot; see :attr:`FakeBedrock.stats`)."""

    requests: int = 0  # all invoke requests, whatever the outcome
    image_calls: int = 0  # 200s for requests with images
    text_calls: int = 0  # 200s for text-only requests
    images: int = 0  # images embedded by those 200s (Cohere: up to 96 a call)
    throttled: int = 0  # 429s sent (quota or injected)
    errors: int = 0  # other non-200s
    max_inflight: int = 0  # peak concurrent invoke requests since start/reset

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


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
    """Fake Bedrock endpoint: Titan, Nova and Cohere embeddings and batch jobs (an EMULATOR).

    ``latency_ms`` (+ uniform ``jitter_ms``) is slept by every invoke request except 429s.
    ``quota_rps`` enables a token bucket of ``burst`` tokens (default: one second's worth,
    at least 1) refilled at ``quota_rps``/s; a request finding it empty gets an immediate
    429 ``ThrottlingException``. Titan's limits default to its strictest documented values.
    Batch jobs (``batch_delay_s``, ``batch_error_rate``) read their input from S3 through
    boto3 (``AWS_ENDPOINT_URL_S3``, e.g. moto) and write their output there.
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
        model_ids: Sequence[str] = tuple(MODELS),
        max_image_bytes: int = titan.MAX_IMAGE_BYTES,
        max_image_side: int = titan.MAX_IMAGE_SIDE,
        max_text_tokens: int = titan.MAX_TEXT_TOKENS,
        batch_delay_s: float = 0.0,
        batch_error_rate: float = 0.0,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.latency_ms = float(latency_ms)
        self.jitter_ms = float(jitter_ms)
        self.model_ids = frozenset(model_ids)
        self.limits = {m.MODEL_ID: m.LIMITS for m in MODELS.values()}
        self.limits[titan.MODEL_ID] = Limits(max_image_bytes, max_image_side, max_text_tokens)
        self.jobs = BatchJobs(self._answer_record, delay_s=batch_delay_s,
                              error_rate=batch_error_rate)
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stats = EmulatorStats()
        self._inflight = 0
        self._faults: deque[tuple[str, str | None, int | None]] = deque()
        self._fail_when: FailPredicate | None = None
        self._rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None
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

    def rewrite_answers(self, rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
        """Pass every successful InvokeModel answer through ``rewrite`` (a broken model)."""
        with self._lock:
            self._rewrite = rewrite

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_when = None
            self._rewrite = None

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

    def model_of(self, model_id: str) -> str:
        """The served model an id or foundation-model ARN names; ResourceNotFound if none."""
        # foundation-model ARN: arn:aws:bedrock:<region>::foundation-model/<id>
        prefix, _, tail = model_id.rpartition("foundation-model/")
        name = tail if prefix.startswith("arn:") else model_id
        if name not in self.model_ids:
            raise BedrockError("ResourceNotFoundException")
        return name

    def route(self, method: str, path: str, body: bytes) -> _Response:
        """Dispatch one HTTP request (used by the handler; callable directly in tests)."""
        raw_path, path = path, urlsplit(path).path
        match = _INVOKE_RE.match(path)
        if match and method == "POST":
            return self._invoke(unquote(match.group(1)), body)
        job = _JOB_RE.match(path)
        try:
            if path == "/model-invocation-job" and method == "POST":
                return _json_response(200, self.jobs.create(_json_body(body), self.model_of))
            if job and method == "GET" and not job.group(2):
                return _json_response(200, self.jobs.get(unquote(job.group(1))))
            if job and method == "POST" and job.group(2):
                return _json_response(200, self.jobs.stop(unquote(job.group(1))))
            if path == "/model-invocation-jobs" and method == "GET":
                query = {k: v[0] for k, v in parse_qs(urlsplit(raw_path).query).items()}
                return _json_response(200, self.jobs.list(query))
        except BedrockError as err:
            return _error_response(err)
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
                return _error_response(validation(str(exc)))
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
        images = 0
        try:
            response, images = self._process(fault, model_id, body)
        except BedrockError as err:
            response = _error_response(err)
        except Exception as exc:  # a bug here must still answer HTTP
            err = BedrockError("InternalServerException", f"Emulator error: {exc!r}")
            response = _error_response(err)
        with self._lock:
            self._inflight -= 1
            if response.status == 200:
                if images:
                    self._stats.image_calls += 1
                    self._stats.images += images
                else:
                    self._stats.text_calls += 1
            elif response.status == 429:
                self._stats.throttled += 1
            else:
                self._stats.errors += 1
        return response

    def _process(
        self, fault: tuple[str, str | None, int | None] | None, model_id: str, body: bytes
    ) -> tuple[_Response, int]:
        if fault is not None:
            err = BedrockError(*fault)
            if err.status != 429:
                self._sleep()
            raise err
        if not self._take_token():
            raise BedrockError("ThrottlingException", THROTTLE_MESSAGE)
        self._sleep()
        return self._embed(model_id, body)

    def _embed(self, model_id: str, body: bytes) -> tuple[_Response, int]:
        started = time.monotonic()
        model = self.model_of(model_id)
        decoded = _json_body(body)
        predicate = self._fail_when
        if predicate is not None and isinstance(decoded, dict):
            code = predicate(decoded)
            if code:
                raise BedrockError(code)
        answer = self._answer(model, decoded)
        payload = self._rewrite(answer.payload) if self._rewrite else answer.payload
        elapsed_ms = int((time.monotonic() - started) * 1000 + self.latency_ms)
        headers = {
            "X-Amzn-Bedrock-Invocation-Latency": str(elapsed_ms),
            "X-Amzn-Bedrock-Input-Token-Count": str(answer.tokens),
        }
        return _json_response(200, payload, headers), answer.images

    def _answer(self, model: str, body: Any) -> Answer:
        return MODELS[model].handle(body, self.limits[model], self.jobs.read_s3)

    def _answer_record(self, model: str, body: Any) -> dict[str, Any]:
        """One batch record's modelOutput (a BedrockError becomes its error)."""
        return self._answer(model, body).payload


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise validation(
            "Malformed input request, please reformat your input and try again."
        ) from None


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
                _error_response(validation("Request body too large or invalid Content-Length."))
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
        description="Fake Bedrock (Titan, Nova and Cohere embeddings; batch inference jobs) "
        "EMULATOR for tests, demos and benchmarks. Not a model.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = ephemeral (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--quota-rps", type=float, default=None, help="default: unlimited")
    parser.add_argument("--burst", type=float, default=None, help="bucket size (default: 1 s)")
    parser.add_argument("--max-text-tokens", type=int, default=titan.MAX_TEXT_TOKENS)
    parser.add_argument("--max-image-bytes", type=int, default=titan.MAX_IMAGE_BYTES)
    parser.add_argument("--max-image-side", type=int, default=titan.MAX_IMAGE_SIDE)
    parser.add_argument("--batch-delay-s", type=float, default=0.0,
                        help="seconds a batch job takes once submitted")
    parser.add_argument("--batch-error-rate", type=float, default=0.0,
                        help="share of batch records answered with an error")
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
        batch_delay_s=args.batch_delay_s,
        batch_error_rate=args.batch_error_rate,
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

"""Amazon Titan Multimodal Embeddings G1 through bedrock-runtime InvokeModel (boto3).

Request/response: ``{"inputImage": b64 | "inputText": str, "embeddingConfig":
{"outputEmbeddingLength": 256|384|1024}}`` → ``{"embedding": [...], "inputTextTokenCount": n}``.
Every attempt goes through one AdaptiveRateLimiter per embedder (so per run), shared by all
threads: it learns the account's quota from ThrottlingException and paces the calls. botocore
itself does not retry (``total_max_attempts`` 1), so the limiter sees every 429; throttling,
timeouts, 5xx and connection errors are retried here, with backoff and jitter, within
``max_attempts`` attempts per call, after which the item is a transient failure.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from imgrag.aws import new_session
from imgrag.embedders.base import EmbedFailed
from imgrag.errors import EmbeddingError
from imgrag.ratelimit import AdaptiveRateLimiter, Outcome
from imgrag.settings import TITAN_IMAGE_MODEL_ID

TITAN_DIMS = (256, 384, 1024)
MAX_TEXT_WORDS = 80  # Titan G1 takes ≤ 128 tokens; 80 words stay well inside it
MAX_TEXT_CHARS = 400
_RUN_FATAL = {
    "AccessDeniedException": "access denied to Bedrock model {model}",
    "ResourceNotFoundException": "Bedrock model {model} not found in this region",
    "UnrecognizedClientException": "AWS credentials rejected by Bedrock",
    "ExpiredTokenException": "AWS credentials expired",
}
_TIMEOUT_CODES = {"ModelTimeoutException", "ModelNotReadyException"}
_THROTTLE_CODES = {"ThrottlingException", "TooManyRequestsException"}
_TRANSIENT_ERRORS = (BotoConnectionError, HTTPClientError)  # timeouts, resets, refused


def _error_code(exc: ClientError) -> tuple[str, int]:
    return (exc.response.get("Error", {}).get("Code", ""),
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _retryable(exc: ClientError) -> bool:
    """Throttling, model timeouts and server errors: the same request may succeed later."""
    code, status = _error_code(exc)
    return code in _THROTTLE_CODES or code in _TIMEOUT_CODES or status >= 500


def truncate_text(text: str) -> str:
    """Cut a query to Titan's input limit instead of letting the service reject it."""
    words = text.split()
    return " ".join(words[:MAX_TEXT_WORDS])[:MAX_TEXT_CHARS]


def check_credentials() -> None:
    """EmbeddingError when boto3 finds no AWS credentials at all (nothing is sent)."""
    if new_session().get_credentials() is None:
        raise EmbeddingError(
            "no AWS credentials found for Bedrock (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
        )


def make_bedrock_client(region: str | None, max_pool: int, read_timeout: float = 60.0) -> Any:
    """A bedrock-runtime client from boto3's standard configuration.

    ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` redirects it (the emulator, a VPC endpoint).
    """
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # TitanEmbedder retries
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=read_timeout,
    )
    return new_session().client("bedrock-runtime", region_name=region, config=config)


class TitanEmbedder:
    """Titan Multimodal Embeddings G1: one image or one text per InvokeModel call."""

    model_id = TITAN_IMAGE_MODEL_ID
    max_batch = 1
    max_image_side = 2048
    max_image_bytes = 5 * 1024 * 1024

    def __init__(
        self,
        dim: int = 1024,
        *,
        client: Any = None,
        region: str | None = None,
        max_attempts: int = 8,
        max_pool: int = 16,
        read_timeout: float = 60.0,
    ) -> None:
        if dim not in TITAN_DIMS:
            raise ValueError(f"Titan output length must be one of {TITAN_DIMS}, not {dim}")
        self.dim = dim
        self.max_attempts = max_attempts
        self.client = client or make_bedrock_client(region, max_pool, read_timeout)
        self.limiter = AdaptiveRateLimiter()
        self.text_tokens = 0
        self._lock = threading.Lock()

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """Embed each image (Titan takes one per call)."""
        config = json.dumps({"outputEmbeddingLength": self.dim})
        vectors = []
        for image in images:
            # Base64 needs no JSON escaping: formatting the body saves json.dumps a ~2 ms scan
            # of the ~1 MB string per image.
            b64 = base64.b64encode(image).decode("ascii")
            payload = f'{{"inputImage": "{b64}", "embeddingConfig": {config}}}'
            vectors.append(self._invoke(payload)["embedding"])
        return vectors

    def embed_text(self, text: str) -> list[float]:
        """Embed a text query (truncated to Titan's limit)."""
        response = self._invoke(json.dumps({
            "inputText": truncate_text(text),
            "embeddingConfig": {"outputEmbeddingLength": self.dim},
        }))
        with self._lock:
            self.text_tokens += int(response.get("inputTextTokenCount") or 0)
        return response["embedding"]

    def close(self) -> None:
        """Close the bedrock-runtime client's connections."""
        self.client.close()

    def _invoke(self, payload: str) -> dict[str, Any]:
        """InvokeModel with the JSON ``payload``, retried within ``max_attempts``."""
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                result = self._send(payload)
            except ClientError as exc:
                code, _ = _error_code(exc)
                message = exc.response.get("Error", {}).get("Message", "")
                if code in _RUN_FATAL:
                    raise EmbeddingError(_RUN_FATAL[code].format(model=self.model_id)) from None
                if _retryable(exc) and not last:
                    _backoff(attempt)
                    continue
                permanent = code == "ValidationException"
                raise EmbedFailed(f"{code}: {message}".strip(": "), permanent=permanent) from None
            except NoCredentialsError:
                raise EmbeddingError("no AWS credentials found for Bedrock") from None
            except BotoCoreError as exc:
                if isinstance(exc, _TRANSIENT_ERRORS) and not last:
                    _backoff(attempt)
                    continue
                raise EmbedFailed(f"{type(exc).__name__}: {exc}", permanent=False) from None
            embedding = result.get("embedding")
            if not isinstance(embedding, list) or len(embedding) != self.dim:
                got = len(embedding) if isinstance(embedding, list) else "no"
                raise EmbedFailed(f"model returned {got} values, expected {self.dim}",
                                  permanent=False)
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _send(self, payload: str) -> dict[str, Any]:
        """One InvokeModel attempt, paced by the limiter and reported back to it."""
        sent_at = self.limiter.acquire()
        outcome: Outcome = "error"
        try:
            response = self.client.invoke_model(
                modelId=self.model_id,
                body=payload,
                contentType="application/json",
                accept="application/json",
            )
            result = json.loads(response["body"].read())
            outcome = "ok"
            return result
        except ClientError as exc:
            if _error_code(exc)[0] in _THROTTLE_CODES:
                outcome = "throttled"
            raise
        finally:
            self.limiter.finished(sent_at, outcome)


def _backoff(attempt: int) -> None:
    """Full-jitter exponential backoff before retry ``attempt`` + 1."""
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))

"""Any model of ``imgrag.embedders.models`` through bedrock-runtime InvokeModel (boto3).

Every attempt goes through one AdaptiveRateLimiter per embedder (so per run), shared by all
threads: it learns the account's quota from ThrottlingException and paces the calls. botocore
itself does not retry (``total_max_attempts`` 1), so the limiter sees every 429; throttling,
timeouts, 5xx and connection errors are retried here, with backoff and jitter, within
``max_attempts`` attempts per call, after which the item is a transient failure.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from imgrag.aws import new_session
from imgrag.embedders.base import EmbedFailed, ModelFormat, average
from imgrag.embedders.cohere import CohereFormat
from imgrag.embedders.nova import NovaFormat
from imgrag.embedders.titan import TitanFormat
from imgrag.errors import EmbeddingError
from imgrag.ratelimit import AdaptiveRateLimiter, Outcome

_RUN_FATAL = {
    "AccessDeniedException": "access denied to Bedrock model {model}",
    "ResourceNotFoundException": "Bedrock model {model} not found in this region",
    "UnrecognizedClientException": "AWS credentials rejected by Bedrock",
    "ExpiredTokenException": "AWS credentials expired",
}
_TIMEOUT_CODES = {"ModelTimeoutException", "ModelNotReadyException"}
_THROTTLE_CODES = {"ThrottlingException", "TooManyRequestsException"}
_TRANSIENT_ERRORS = (BotoConnectionError, HTTPClientError)  # timeouts, resets, refused
_TOKEN_HEADER = "x-amzn-bedrock-input-token-count"


def _error_code(exc: ClientError) -> tuple[str, int]:
    return (exc.response.get("Error", {}).get("Code", ""),
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _retryable(exc: ClientError) -> bool:
    """Throttling, model timeouts and server errors: the same request may succeed later."""
    code, status = _error_code(exc)
    return code in _THROTTLE_CODES or code in _TIMEOUT_CODES or status >= 500


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
        retries={"total_max_attempts": 1, "mode": "standard"},  # BedrockEmbedder retries
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=read_timeout,
    )
    return new_session().client("bedrock-runtime", region_name=region, config=config)


class BedrockEmbedder:
    """One model's embeddings, its requests built and read by its ``ModelFormat``."""

    format: ClassVar[type[ModelFormat]]

    def __init__(
        self,
        dim: int | None = None,
        *,
        client: Any = None,
        region: str | None = None,
        max_attempts: int = 8,
        max_pool: int = 16,
        read_timeout: float = 60.0,
    ) -> None:
        spec = self.spec = self.format.spec
        dim = spec.default_dim if dim is None else dim
        if dim not in spec.dims:
            raise ValueError(f"{spec.name} dimension must be one of {spec.dims}, not {dim}")
        self.model_id = spec.model_id
        self.dim = dim
        self.max_attempts = max_attempts
        self.client = client or make_bedrock_client(region, max_pool, read_timeout)
        self.limiter = AdaptiveRateLimiter()
        self.text_tokens = 0
        self._lock = threading.Lock()

    @property
    def max_batch(self) -> int:
        """Images per call."""
        return self.spec.images_per_call

    @property
    def max_image_side(self) -> int:
        return self.spec.max_image_side

    @property
    def max_image_bytes(self) -> int:
        return self.spec.max_image_bytes

    def calls(self, images: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
        """``images`` in the groups one request takes: by count and by body size."""
        fmt, spec = self.format, self.spec
        start, size = 0, 0
        for end, image in enumerate(images):
            grow = fmt.request_bytes(len(image))
            if end > start and (end - start == spec.images_per_call
                                or size + grow > spec.max_request_bytes):
                yield images[start:end]
                start, size = end, 0
            size += grow
        if start < len(images):
            yield images[start:]

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """One vector per image, in as few requests as the model's limits allow."""
        vectors: list[list[float]] = []
        for group in self.calls(images):
            vectors += self._vectors(self._invoke(self.format.image_body(group, self.dim))[0],
                                     len(group))
        return vectors

    def embed_s3_image(self, uri: str, image_format: str) -> list[float]:
        """Embed an image Bedrock reads from S3 (``s3Location``): nothing downloaded here."""
        body = self.format.s3_image_body(uri, image_format, self.dim)
        return self._vectors(self._invoke(body)[0], 1)[0]

    def embed_text(self, text: str) -> list[float]:
        """Embed a query text (cut to the model's input limit)."""
        response, tokens = self._invoke(self.format.text_body(text, self.dim))
        with self._lock:
            self.text_tokens += tokens
        return self._vectors(response, 1)[0]

    def embed_image_text(self, image: bytes, text: str) -> list[float]:
        """One vector for an image and a text: one call when the model takes both, else
        the average of the image's and the text's."""
        body = self.format.image_text_body(image, text, self.dim)
        if body is None:
            return average(self.embed_images([image])[0], self.embed_text(text))
        response, tokens = self._invoke(body)
        with self._lock:
            self.text_tokens += tokens
        return self._vectors(response, 1)[0]

    def close(self) -> None:
        """Close the bedrock-runtime client's connections."""
        self.client.close()

    def _vectors(self, response: dict[str, Any], expected: int) -> list[list[float]]:
        """The response's vectors, checked: ``expected`` of them, each of ``dim`` floats."""
        vectors = self.format.vectors(response)
        if len(vectors) != expected:  # ids and vectors would be misaligned
            raise EmbedFailed(f"model returned {len(vectors)} vectors for {expected} inputs",
                              permanent=False)
        for vector in vectors:
            if not isinstance(vector, list) or len(vector) != self.dim:
                got = len(vector) if isinstance(vector, list) else "no"
                raise EmbedFailed(f"model returned {got} values, expected {self.dim}",
                                  permanent=False)
        return vectors

    def _invoke(self, payload: str) -> tuple[dict[str, Any], int]:
        """InvokeModel with the JSON ``payload``, retried within ``max_attempts``; the
        response and the input tokens Bedrock billed."""
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                return self._send(payload)
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
        raise AssertionError("unreachable")  # the loop returns or raises

    def _send(self, payload: str) -> tuple[dict[str, Any], int]:
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
            result = _json(response["body"].read())
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            outcome = "ok"
            return result, int(headers.get(_TOKEN_HEADER) or 0)
        except ClientError as exc:
            if _error_code(exc)[0] in _THROTTLE_CODES:
                outcome = "throttled"
            raise
        finally:
            self.limiter.finished(sent_at, outcome)


def _json(body: bytes) -> dict[str, Any]:
    """A response body as a JSON object; EmbedFailed if it is not one."""
    try:
        result = json.loads(body)
    except ValueError:
        raise EmbedFailed("model answered with invalid JSON", permanent=False) from None
    if not isinstance(result, dict):
        raise EmbedFailed("model answered with a JSON value that is not an object",
                          permanent=False)
    return result


def _backoff(attempt: int) -> None:
    """Full-jitter exponential backoff before retry ``attempt`` + 1."""
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))


class TitanEmbedder(BedrockEmbedder):
    """Titan Multimodal Embeddings G1: one image or one text per call."""

    format = TitanFormat


class NovaEmbedder(BedrockEmbedder):
    """Nova Multimodal Embeddings: one image or one text per call."""

    format = NovaFormat


class CohereEmbedder(BedrockEmbedder):
    """Cohere Embed v4: up to 96 images per call."""

    format = CohereFormat


EMBEDDERS: dict[str, type[BedrockEmbedder]] = {
    cls.format.spec.model_id: cls for cls in (TitanEmbedder, NovaEmbedder, CohereEmbedder)
}

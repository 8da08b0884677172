"""The embedder protocol, and what a model module declares: its facts and its wire format.

A model module (``titan.py``, ``nova.py``, ``cohere.py``) holds everything about one model
and imports nothing heavy: ``settings`` validates against its facts without loading boto3.
"""

from __future__ import annotations

import base64
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (unchanged when zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else list(vector)


def average(*vectors: Sequence[float]) -> list[float]:
    """The unit mean of unit vectors: how Titan combines an image and a text."""
    units = [unit(v) for v in vectors]
    return unit([sum(parts) / len(units) for parts in zip(*units, strict=True)])


class EmbedFailed(Exception):
    """One embedding call failed; ``permanent`` means the same input would fail again."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class ModelSpec(BaseModel):
    """The facts of one Bedrock embedding model: the only place each of them is written."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    name: str
    short_name: str  # accepted by --model / IMGRAG_MODEL
    dims: tuple[int, ...]
    default_dim: int
    images_per_call: int
    max_request_bytes: int  # one InvokeModel body (images as base64 included)
    max_image_bytes: int  # one encoded image as sent
    max_image_side: int  # pixels; larger images are downscaled before sending
    max_text_tokens: int  # the documented input limit
    max_text_chars: int  # a character bound applied with it
    price_per_image: float  # USD, on-demand
    price_per_1k_text_tokens: float  # USD, on-demand
    batch_inference: bool  # Bedrock batch inference (CreateModelInvocationJob) supported
    max_s3_image_bytes: int = 0  # images read by Bedrock from S3 (s3Location); 0: never
    languages: str
    sources: str  # where the facts come from


class ModelFormat(ABC):
    """One model's InvokeModel request and response JSON."""

    spec: ClassVar[ModelSpec]

    @classmethod
    @abstractmethod
    def image_body(cls, images: Sequence[bytes], dim: int) -> str:
        """The request embedding ``images`` for the index (at most ``images_per_call``)."""

    @classmethod
    @abstractmethod
    def text_body(cls, text: str, dim: int) -> str:
        """The request embedding a query text, cut to the model's input limit."""

    @classmethod
    @abstractmethod
    def vectors(cls, response: dict[str, Any]) -> list[list[float]]:
        """The vectors of a response, in request order."""

    @classmethod
    def s3_image_body(cls, uri: str, image_format: str, dim: int) -> str:
        """The request embedding an image Bedrock reads from S3 (models with
        ``max_s3_image_bytes`` only)."""
        raise NotImplementedError(f"{cls.spec.name} takes no S3 locations")

    @classmethod
    def image_text_body(cls, image: bytes, text: str, dim: int) -> str | None:
        """The request embedding an image and a text as one vector, or None when the model
        takes one input a call (the two vectors are then averaged)."""
        return None

    @classmethod
    def request_bytes(cls, image_bytes: int) -> int:
        """What one image of ``image_bytes`` adds to a request body (base64 + quoting)."""
        return 4 * ((image_bytes + 2) // 3) + 64


def b64(data: bytes) -> str:
    """Base64 text: needs no JSON escaping, so bodies are formatted without json.dumps's
    ~2 ms scan of a ~1 MB string per image."""
    return base64.b64encode(data).decode("ascii")


class Embedder(Protocol):
    """A multimodal embedding model. The pipeline asks these facts, never hard-codes them."""

    spec: ModelSpec
    model_id: str
    dim: int
    max_batch: int  # images per call
    max_image_side: int  # pixels
    max_image_bytes: int
    text_tokens: int  # text tokens billed so far by this instance

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """One vector per JPEG/PNG image (at most ``max_batch``); EmbedFailed on error."""

    def embed_text(self, text: str) -> list[float]:
        """The vector of a text query, truncated to the model's input limit."""

    def embed_s3_image(self, uri: str, image_format: str) -> list[float]:
        """The vector of an image the model reads from S3 itself (``max_s3_image_bytes``)."""

    def embed_image_text(self, image: bytes, text: str) -> list[float]:
        """One vector for an image and a text together (a combined query): one call when
        the model takes both (``ModelFormat.image_text_body``), else :func:`average` of two."""

    def close(self) -> None:
        """Close the model client's connections."""

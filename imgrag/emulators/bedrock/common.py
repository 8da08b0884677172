"""What every emulated model shares: service errors, request checks, image decoding and
the colour semantics of the vectors (deterministic histograms, NOT a model)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

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
CONTENT_WEIGHT = 0.15  # weight of the per-input hashed component
THUMBNAIL_SIDE = 64


class BedrockError(Exception):
    """A service error: sent as status + ``x-amzn-ErrorType`` header + ``{"message"}``."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None) -> None:
        self.code = code
        self.message = message or _DEFAULT_MESSAGES.get(code, code)
        self.status = status if status is not None else ERROR_STATUS.get(code, 400)
        super().__init__(f"{code} ({self.status}): {self.message}")


def validation(message: str) -> BedrockError:
    """A 400 ValidationException with ``message``."""
    return BedrockError("ValidationException", message)




class Limits(NamedTuple):
    """Input limits of the emulated model (Titan's are knobs of the emulator)."""

    max_image_bytes: int
    max_image_side: int
    max_text_tokens: int


class Answer(NamedTuple):
    """A model's answer to one request: the JSON payload, images embedded, tokens billed."""

    payload: dict[str, Any]
    images: int
    tokens: int


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


def hashed_unit(kind: str, data: bytes, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(kind.encode() + b"\x00" + data).digest()[:8], "little")
    return _unit(np.random.default_rng(seed), dim)


def normalise(v: np.ndarray) -> np.ndarray:
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
    return normalise(v + CONTENT_WEIGHT * hashed_unit("image", raw, dim))


def embed_text(text: str, dim: int) -> np.ndarray:
    """Unit vector: sum of the concepts of colour words in *text* + a hash-of-text component."""
    concepts = sorted({COLOUR_WORDS[m.lower()] for m in _COLOUR_RE.findall(text)})
    v = hashed_unit("text", text.encode(), dim)
    if concepts:
        m = _concept_matrix(dim)
        v = m[[_CONCEPT_INDEX[c] for c in concepts]].sum(axis=0) + CONTENT_WEIGHT * v
    return normalise(v)


def type_name(value: object) -> str:
    return {
        dict: "JSONObject",
        list: "JSONArray",
        str: "String",
        bool: "Boolean",
        int: "Integer",
        float: "Number",
        type(None): "Null",
    }.get(type(value), "Unknown")


def check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise validation(
                f"Malformed input request: {where}: extraneous key [{key}] is "
                "not permitted, please reformat your input and try again."
            )




def decode_image(
    b64: str, max_bytes: int, max_side: int, formats: Iterable[str] = ("PNG", "JPEG", "MPO")
) -> tuple[bytes, Image.Image]:
    """Base64 -> bytes -> header-only ``Image.open`` with the model's checks; thumbnail."""
    accepted = frozenset(formats)
    """Base64 -> bytes -> header-only ``Image.open`` with Titan's checks; thumbnail for speed."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise validation("Unable to process provided image: invalid base64 encoding.") from None
    if not raw:
        raise validation("Unable to process provided image: empty image.")
    if len(raw) > max_bytes:
        raise validation(f"Image exceeds max size allowed: {len(raw)} bytes > {max_bytes} bytes.")
    try:
        image = Image.open(io.BytesIO(raw))  # lazy: reads the header only
    except Image.DecompressionBombError:
        raise validation("Image exceeds max pixels allowed") from None
    except Exception:  # any failure to identify the image is a client error
        raise validation("Unable to process provided image") from None
    if image.format not in accepted:
        raise validation(
            f"Unsupported image format: {image.format}. Supported formats are PNG and JPEG."
        )
    width, height = image.size
    if width > max_side or height > max_side:
        raise validation("Image exceeds max pixels allowed")
    try:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced scale
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        image = image.convert("RGB")
    except Exception:  # truncated/corrupt pixel data
        raise validation("Unable to process provided image") from None
    return raw, image


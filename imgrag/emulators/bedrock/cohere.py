"""Cohere Embed v4's wire format on Bedrock, emulated: up to 96 images or texts a call.

``{"input_type", "texts": [...] | "images": ["data:image/...;base64,..."], "embedding_types":
["float"], "output_dimension", "truncate"}`` → ``{"id", "embeddings": {"float": [[...]]},
"response_type": "embeddings_by_type", "texts", "images"}`` (without ``embedding_types``:
``"embeddings": [[...]]``, ``"response_type": "embeddings_floats"``). Images are data URI
strings, as AWS's current page shows. Input types matter as they do for the model:
documents (images) embedded as ``search_document`` are found by ``search_query`` texts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from imgrag.emulators.bedrock.common import (
    Answer,
    Limits,
    check_keys,
    count_tokens,
    decode_image,
    embed_image,
    embed_text,
    hashed_unit,
    normalise,
    type_name,
    validation,
)

MODEL_ID = "cohere.embed-v4:0"
DIMENSIONS = (256, 512, 1024, 1536)
DEFAULT_DIMENSION = 1536
INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
MAX_INPUTS = 96
MAX_IMAGE_PIXELS = 2_458_624  # larger images are downsampled by the service, not refused
LIMITS = Limits(max_image_bytes=5 * 1024 * 1024, max_image_side=16384,
                max_text_tokens=128_000)
_DATA_URI = re.compile(r"^data:image/(jpeg|png|webp|gif);base64,(.*)$", re.DOTALL)
_FORMATS = {"jpeg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",), "gif": ("GIF",)}
_MATCHED = {("image", "search_document"), ("text", "search_query")}
MISMATCH_WEIGHT = 0.3


def _purposed(vector: np.ndarray, kind: str, input_type: str) -> np.ndarray:
    if (kind, input_type) in _MATCHED:
        return vector
    twist = hashed_unit("cohere-input-type", f"{kind}:{input_type}".encode(), vector.shape[0])
    return normalise(MISMATCH_WEIGHT * vector + twist)


def handle(body: Any, limits: Limits, read_s3: Callable[[str], bytes]) -> Answer:
    """Validate a decoded request and answer it."""
    if not isinstance(body, dict):
        raise validation(f"invalid request: expected an object, found {type_name(body)}")
    check_keys(body, {"input_type", "texts", "images", "inputs", "embedding_types",
                      "output_dimension", "max_tokens", "truncate"}, "#")
    input_type = body.get("input_type")
    if input_type not in INPUT_TYPES:
        raise validation(f"invalid request: input_type must be one of {sorted(INPUT_TYPES)}")
    dim = body.get("output_dimension", DEFAULT_DIMENSION)
    if isinstance(dim, bool) or dim not in DIMENSIONS:
        raise validation(f"invalid request: output_dimension must be one of {DIMENSIONS}")
    types = body.get("embedding_types")
    if types is not None and types != ["float"]:
        raise validation("invalid request: the emulator returns float embeddings only")
    given = [k for k in ("texts", "images", "inputs") if body.get(k) is not None]
    if len(given) != 1:
        raise validation("invalid request: give exactly one of texts, images or inputs")
    items = body[given[0]]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_INPUTS:
        raise validation(f"invalid request: {given[0]} must hold 1 to {MAX_INPUTS} items")
    if given[0] == "texts":
        if not all(isinstance(t, str) and t for t in items):
            raise validation("invalid request: texts must be non-empty strings")
        vectors = [_purposed(embed_text(t, dim), "text", input_type) for t in items]
        tokens, images = sum(count_tokens(t) for t in items), 0
    elif given[0] == "images":
        vectors = [_purposed(_image(uri, i, dim, limits), "image", input_type)
                   for i, uri in enumerate(items)]
        tokens, images = 0, len(items)
    else:
        raise validation("invalid request: the emulator does not embed interleaved inputs")
    floats = [v.tolist() for v in vectors]
    if types is None:
        payload: dict[str, Any] = {"id": str(uuid.uuid4()), "embeddings": floats,
                                   "response_type": "embeddings_floats"}
    else:
        payload = {"id": str(uuid.uuid4()), "embeddings": {"float": floats},
                   "response_type": "embeddings_by_type"}
    payload["texts"] = items if given[0] == "texts" else []
    return Answer(payload, images, tokens)


def _image(uri: Any, index: int, dim: int, limits: Limits) -> np.ndarray:
    if not isinstance(uri, str):
        raise validation(f"invalid request: images[{index}] must be a data URI string,"
                         f" not {type_name(uri)}")
    match = _DATA_URI.match(uri)
    if not match:
        raise validation(f"invalid request: images[{index}] is not a base64 image data URI")
    raw, image = decode_image(match.group(2), limits.max_image_bytes, limits.max_image_side,
                              formats=_FORMATS[match.group(1)])
    return embed_image(image, raw, dim)

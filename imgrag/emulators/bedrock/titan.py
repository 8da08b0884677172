"""Titan Multimodal Embeddings G1's wire format, emulated: ``{"inputText", "inputImage",
"embeddingConfig": {"outputEmbeddingLength"}}`` → ``{"embedding", "inputTextTokenCount",
"message"}``; one image and/or one text (both: their average)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from imgrag.emulators.bedrock.common import (
    Answer,
    Limits,
    check_keys,
    count_tokens,
    decode_image,
    embed_image,
    embed_text,
    normalise,
    type_name,
    validation,
)

MODEL_ID = "amazon.titan-embed-image-v1"
EMBEDDING_LENGTHS = (256, 384, 1024)
DEFAULT_EMBEDDING_LENGTH = 1024
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 2048
MAX_TEXT_TOKENS = 256  # AWS model page (older copies: 128)
LIMITS = Limits(MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, MAX_TEXT_TOKENS)


class _Request(NamedTuple):
    text: str | None
    image_b64: str | None
    dim: int



def parse_body(body: Any) -> _Request:
    """Validate a decoded Titan Multimodal Embeddings request body."""
    if not isinstance(body, dict):
        raise validation(
            f"Malformed input request: #: expected type: JSONObject, found: "
            f"{type_name(body)}, please reformat your input and try again."
        )
    check_keys(body, {"inputText", "inputImage", "embeddingConfig"}, "#")
    for key in ("inputText", "inputImage"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise validation(
                f"Malformed input request: #/{key}: expected type: String, found: "
                f"{type_name(body[key])}, please reformat your input and try "
                "again."
            )
    text = body.get("inputText") or None
    image = body.get("inputImage") or None
    if text is None and image is None:
        raise validation(
            "Malformed input request: at least one of inputText or inputImage "
            "is required, please reformat your input and try again."
        )
    dim = DEFAULT_EMBEDDING_LENGTH
    config = body.get("embeddingConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise validation(
                "Malformed input request: #/embeddingConfig: expected type: "
                f"JSONObject, found: {type_name(config)}, please reformat your "
                "input and try again."
            )
        check_keys(config, {"outputEmbeddingLength"}, "#/embeddingConfig")
        length = config.get("outputEmbeddingLength", DEFAULT_EMBEDDING_LENGTH)
        if isinstance(length, bool) or length not in EMBEDDING_LENGTHS:
            raise validation(
                "Malformed input request: #/embeddingConfig/outputEmbeddingLength:"
                f" {json.dumps(length)} is not a valid enum value, please reformat"
                " your input and try again."
            )
        dim = int(length)
    return _Request(text, image, dim)



def handle(body: Any, limits: Limits, read_s3: Callable[[str], bytes]) -> Answer:
    """Validate a decoded request and answer it (Titan reads nothing from S3)."""
    req = parse_body(body)
    tokens = 0
    vectors = []
    if req.text is not None:
        tokens = count_tokens(req.text)
        if tokens > limits.max_text_tokens:
            raise validation(
                f"Malformed input request: inputText has {tokens} tokens, "
                f"max allowed is {limits.max_text_tokens}, please reformat "
                "your input and try again."
            )
    if req.image_b64 is not None:
        raw, image = decode_image(req.image_b64, limits.max_image_bytes, limits.max_image_side)
        vectors.append(embed_image(image, raw, req.dim))
    if req.text is not None:
        vectors.append(embed_text(req.text, req.dim))
    vector = normalise(np.mean(vectors, axis=0)) if len(vectors) > 1 else vectors[0]
    payload = {"embedding": vector.tolist(), "inputTextTokenCount": tokens, "message": None}
    return Answer(payload, 1 if req.image_b64 else 0, tokens)

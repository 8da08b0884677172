"""Nova Multimodal Embeddings' synchronous wire format, emulated (one input per call).

``{"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {"embeddingPurpose",
"embeddingDimension", "image": {"format", "detailLevel", "source": {"bytes"} |
{"s3Location": {"uri"}}} | "text": {"truncationMode", "value"}}}`` →
``{"embeddings": [{"embeddingType", "embedding", "truncatedCharLength"?}]}``.

Purposes matter as they do for the model: images indexed with ``GENERIC_INDEX`` are found
by texts embedded for retrieval (``IMAGE_RETRIEVAL``, ``GENERIC_RETRIEVAL``); any other
pairing lands in another region of the space (a mostly purpose-hashed vector).
"""

from __future__ import annotations

import base64
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

MODEL_ID = "amazon.nova-2-multimodal-embeddings-v1:0"
DIMENSIONS = (256, 384, 1024, 3072)
DEFAULT_DIMENSION = 3072
PURPOSES = frozenset({
    "GENERIC_INDEX", "GENERIC_RETRIEVAL", "TEXT_RETRIEVAL", "IMAGE_RETRIEVAL",
    "VIDEO_RETRIEVAL", "DOCUMENT_RETRIEVAL", "AUDIO_RETRIEVAL", "CLASSIFICATION", "CLUSTERING",
})  # fmt: skip
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP"}
MAX_TEXT_CHARS = 8192
LIMITS = Limits(max_image_bytes=25 * 1024 * 1024, max_image_side=8192,
                max_text_tokens=8192)
_MATCHED = {("image", "GENERIC_INDEX"), ("text", "IMAGE_RETRIEVAL"),
            ("text", "GENERIC_RETRIEVAL")}
MISMATCH_WEIGHT = 0.3  # share of the content vector left in a mismatched purpose's vector


def _malformed(where: str, problem: str) -> Exception:
    return validation(f"Malformed input request: {where}: {problem}, please reformat your"
                      " input and try again.")


def _purposed(vector: np.ndarray, kind: str, purpose: str) -> np.ndarray:
    if (kind, purpose) in _MATCHED:
        return vector
    twist = hashed_unit("nova-purpose", f"{kind}:{purpose}".encode(), vector.shape[0])
    return normalise(MISMATCH_WEIGHT * vector + twist)


def handle(body: Any, limits: Limits, read_s3: Callable[[str], bytes]) -> Answer:
    """Validate a decoded request and answer it."""
    if not isinstance(body, dict):
        raise _malformed("#", f"expected type: JSONObject, found: {type_name(body)}")
    check_keys(body, {"schemaVersion", "taskType", "singleEmbeddingParams"}, "#")
    if body.get("taskType") != "SINGLE_EMBEDDING":
        raise _malformed("#/taskType", "InvokeModel takes SINGLE_EMBEDDING only")
    params = body.get("singleEmbeddingParams")
    if not isinstance(params, dict):
        raise _malformed("#", "required key [singleEmbeddingParams] not found")
    check_keys(params, {"embeddingPurpose", "embeddingDimension", "text", "image", "audio",
                        "video"}, "#/singleEmbeddingParams")
    purpose = params.get("embeddingPurpose")
    if purpose not in PURPOSES:
        raise _malformed("#/singleEmbeddingParams/embeddingPurpose",
                         f"{purpose!r} is not a valid enum value")
    dim = params.get("embeddingDimension", DEFAULT_DIMENSION)
    if isinstance(dim, bool) or dim not in DIMENSIONS:
        raise _malformed("#/singleEmbeddingParams/embeddingDimension",
                         f"{dim!r} is not a valid enum value")
    given = [k for k in ("text", "image", "audio", "video") if k in params]
    if len(given) != 1:
        raise validation("Exactly one of text, image, audio or video is required.")
    if given[0] == "text":
        return _text(params["text"], purpose, dim, limits)
    if given[0] == "image":
        return _image(params["image"], purpose, dim, limits, read_s3)
    raise validation(f"The emulator does not embed {given[0]}.")


def _text(text: Any, purpose: str, dim: int, limits: Limits) -> Answer:
    if not isinstance(text, dict) or not isinstance(text.get("value"), str):
        raise _malformed("#/singleEmbeddingParams/text", "required key [value] not found")
    check_keys(text, {"truncationMode", "value"}, "#/singleEmbeddingParams/text")
    mode = text.get("truncationMode")
    if mode not in ("START", "END", "NONE"):
        raise _malformed("#/singleEmbeddingParams/text/truncationMode",
                         f"{mode!r} is not a valid enum value")
    value: str = text["value"]
    if not value:
        raise validation("Text value must not be empty.")
    if len(value) > MAX_TEXT_CHARS:
        raise validation(f"Text is {len(value)} characters; at most {MAX_TEXT_CHARS}.")
    item: dict[str, Any] = {"embeddingType": "TEXT"}
    tokens = count_tokens(value)
    if tokens > limits.max_text_tokens:
        if mode == "NONE":
            raise validation(f"Text has {tokens} tokens, above {limits.max_text_tokens}.")
        keep = value.split()[: limits.max_text_tokens]
        value = " ".join(keep) if mode == "END" else " ".join(value.split()[-len(keep):])
        item["truncatedCharLength"] = len(value)
        tokens = count_tokens(value)
    item["embedding"] = _purposed(embed_text(value, dim), "text", purpose).tolist()
    return Answer({"embeddings": [item]}, 0, tokens)


def _image(image: Any, purpose: str, dim: int, limits: Limits,
           read_s3: Callable[[str], bytes]) -> Answer:
    where = "#/singleEmbeddingParams/image"
    if not isinstance(image, dict):
        raise _malformed(where, f"expected type: JSONObject, found: {type_name(image)}")
    check_keys(image, {"format", "detailLevel", "source"}, where)
    fmt = image.get("format")
    if fmt not in IMAGE_FORMATS:
        raise _malformed(f"{where}/format", f"{fmt!r} is not a valid enum value")
    if image.get("detailLevel", "STANDARD_IMAGE") not in ("STANDARD_IMAGE", "DOCUMENT_IMAGE"):
        raise _malformed(f"{where}/detailLevel", "not a valid enum value")
    source = image.get("source")
    if not isinstance(source, dict) or len(source) != 1:
        raise _malformed(f"{where}/source", "exactly one of bytes or s3Location is required")
    if "bytes" in source and isinstance(source["bytes"], str):
        encoded = source["bytes"]
    elif isinstance(source.get("s3Location"), dict) and isinstance(
            source["s3Location"].get("uri"), str):
        encoded = base64.b64encode(read_s3(source["s3Location"]["uri"])).decode()
    else:
        raise _malformed(f"{where}/source", "exactly one of bytes or s3Location is required")
    raw, decoded = decode_image(encoded, limits.max_image_bytes, limits.max_image_side,
                                formats=(IMAGE_FORMATS[fmt], "MPO") if fmt == "jpeg"
                                else (IMAGE_FORMATS[fmt],))
    vector = _purposed(embed_image(decoded, raw, dim), "image", purpose)
    return Answer({"embeddings": [{"embeddingType": "IMAGE", "embedding": vector.tolist()}]},
                  1, 0)

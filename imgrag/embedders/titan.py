"""Amazon Titan Multimodal Embeddings G1: its facts and its InvokeModel JSON.

Request ``{"inputImage": b64 | "inputText": str, "embeddingConfig": {"outputEmbeddingLength":
256|384|1024}}`` → ``{"embedding": [...], "inputTextTokenCount": n, "message": ...}``; one
image or one text per call. Facts: AWS's model page (text ≤ 256 tokens, English; image
≤ 25 MB, ≤ 2048×2048 px) and its parameters page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from imgrag.embedders.base import EmbedFailed, ModelFormat, ModelSpec, b64

SPEC = ModelSpec(
    model_id="amazon.titan-embed-image-v1",
    name="Titan Multimodal Embeddings G1",
    short_name="titan",
    dims=(256, 384, 1024),
    default_dim=1024,
    images_per_call=1,
    max_request_bytes=25 * 1024 * 1024,
    # 25 MB documented now; older copies say 5 MB: images are sent under the stricter one.
    max_image_bytes=5 * 1024 * 1024,
    max_image_side=2048,
    max_text_tokens=256,  # AWS's model page (older copies: 128)
    max_text_chars=2048,
    price_per_image=0.00006,
    price_per_1k_text_tokens=0.0008,
    batch_inference=True,
    languages="English",
    sources="docs.aws.amazon.com/bedrock/latest/userguide/titan-multiemb-models.html",
)

# A token estimate on the generous side of BPE tokenizers (English words average ~4
# characters a token): a run of ASCII letters or digits is one token per 3 characters (at
# least 1); every other visible character (punctuation, CJK, accented letters) is one.
_ASCII_RUN = re.compile(r"[A-Za-z0-9]+|\S")
_CHARS_PER_TOKEN = 3


def truncate_text(text: str, max_tokens: int = SPEC.max_text_tokens) -> str:
    """``text`` cut at the last piece that keeps its estimated tokens within ``max_tokens``
    (and ``max_text_chars``), so the service never refuses a long query."""
    text = text[: SPEC.max_text_chars]
    used = 0
    for match in _ASCII_RUN.finditer(text):
        cost = math.ceil(len(match.group()) / _CHARS_PER_TOKEN)
        if used + cost > max_tokens:  # keep what fits of this piece
            return text[: match.start() + _CHARS_PER_TOKEN * (max_tokens - used)].rstrip()
        used += cost
    return text


class TitanFormat(ModelFormat):
    """Titan G1's request and response JSON."""

    spec = SPEC

    @classmethod
    def image_body(cls, images: Sequence[bytes], dim: int) -> str:
        (image,) = images
        config = f'{{"outputEmbeddingLength": {dim}}}'
        return f'{{"inputImage": "{b64(image)}", "embeddingConfig": {config}}}'

    @classmethod
    def text_body(cls, text: str, dim: int) -> str:
        return json.dumps({"inputText": truncate_text(text),
                           "embeddingConfig": {"outputEmbeddingLength": dim}})

    @classmethod
    def image_text_body(cls, image: bytes, text: str, dim: int) -> str:
        """Both inputs in one request: Titan returns their average."""
        return json.dumps({"inputImage": b64(image), "inputText": truncate_text(text),
                           "embeddingConfig": {"outputEmbeddingLength": dim}})

    @classmethod
    def vectors(cls, response: dict[str, Any]) -> list[list[float]]:
        embedding = response.get("embedding")
        if not isinstance(embedding, list):
            raise EmbedFailed("model returned no embedding", permanent=False)
        return [embedding]

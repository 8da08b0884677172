"""Cohere Embed v4 on Bedrock: its facts and its InvokeModel JSON.

``{"input_type": "search_document"|"search_query", "images": ["data:image/jpeg;base64,…"]
(≤ 96) | "texts": [...], "embedding_types": ["float"], "output_dimension":
256|512|1024|1536, "truncate": "RIGHT"}`` → ``{"id", "embeddings": {"float": [[...], ...]},
"response_type": "embeddings_by_type"}``. Texts and images never share a call. Facts: AWS's
Cohere Embed v4 parameters page (images above 2,458,624 px = 1568² are downsampled, so
nothing larger is sent; ≤ 5 MB per image; the ~20 MB request bound is Cohere's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from imgrag.embedders.base import EmbedFailed, ModelFormat, ModelSpec, b64

SPEC = ModelSpec(
    model_id="cohere.embed-v4:0",
    name="Cohere Embed v4",
    short_name="cohere",
    dims=(256, 512, 1024, 1536),
    default_dim=1536,
    images_per_call=96,
    max_request_bytes=20 * 1024 * 1024,
    max_image_bytes=5 * 1024 * 1024,
    max_image_side=1568,
    max_text_tokens=128_000,
    max_text_chars=2048,  # a query; the service truncates by tokens ("truncate": "RIGHT")
    price_per_image=0.00047,
    price_per_1k_text_tokens=0.00012,
    batch_inference=False,  # not listed among batch inference's models
    languages="100+ languages",
    sources="docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v4.html",
)
# The current AWS page shows a data URI string per image; older copies show an object
# ``{"url": ...}`` for image_url parts. This is the one place that choice is made.
IMAGE_PREFIX = "data:image/jpeg;base64,"


class CohereFormat(ModelFormat):
    """Cohere Embed v4's request and response JSON (float embeddings only)."""

    spec = SPEC

    @classmethod
    def image_body(cls, images: Sequence[bytes], dim: int) -> str:
        uris = ", ".join(f'"{IMAGE_PREFIX}{b64(image)}"' for image in images)
        return (f'{{"input_type": "search_document", "images": [{uris}],'
                f' "embedding_types": ["float"], "output_dimension": {dim}}}')

    @classmethod
    def text_body(cls, text: str, dim: int) -> str:
        return json.dumps({"input_type": "search_query", "texts": [text[: SPEC.max_text_chars]],
                           "embedding_types": ["float"], "output_dimension": dim,
                           "truncate": "RIGHT"})

    @classmethod
    def vectors(cls, response: dict[str, Any]) -> list[list[float]]:
        embeddings = response.get("embeddings")
        if isinstance(embeddings, dict):  # embeddings_by_type
            embeddings = embeddings.get("float")
        if not isinstance(embeddings, list):
            raise EmbedFailed("model returned no float embeddings", permanent=False)
        return embeddings

    @classmethod
    def request_bytes(cls, image_bytes: int) -> int:
        return super().request_bytes(image_bytes) + len(IMAGE_PREFIX)

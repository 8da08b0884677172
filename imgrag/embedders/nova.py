"""Amazon Nova Multimodal Embeddings: its facts and its InvokeModel JSON.

``{"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {"embeddingPurpose": P,
"embeddingDimension": 256|384|1024|3072, "image": {"format": "jpeg", "detailLevel":
"STANDARD_IMAGE", "source": {"bytes": b64} | {"s3Location": {"uri": ...}}} | "text":
{"truncationMode": "END", "value": ...}}}`` → ``{"embeddings": [{"embeddingType", "embedding",
"truncatedCharLength"?}]}``. One input per call. Images are indexed with ``GENERIC_INDEX``
and text queries against them use ``IMAGE_RETRIEVAL`` (Nova's purposes pair an index with
the retrieval of what it holds). Facts: the Nova user guide's embeddings schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from imgrag.embedders.base import EmbedFailed, ModelFormat, ModelSpec, b64

SPEC = ModelSpec(
    model_id="amazon.nova-2-multimodal-embeddings-v1:0",
    name="Nova Multimodal Embeddings",
    short_name="nova",
    dims=(256, 384, 1024, 3072),
    default_dim=3072,
    images_per_call=1,
    max_request_bytes=25 * 1024 * 1024,  # inline, after base64
    max_image_bytes=18 * 1024 * 1024,  # what base64 of 25 MB leaves
    max_image_side=4096,  # no pixel limit documented; bounded like the other models
    max_text_tokens=8192,  # "8K tokens" context
    max_text_chars=8192,  # the text value's documented character limit
    price_per_image=0.00006,
    price_per_1k_text_tokens=0.000135,
    batch_inference=True,
    max_s3_image_bytes=50 * 1024 * 1024,
    languages="200+ languages (text)",
    sources="docs.aws.amazon.com/nova/latest/userguide/embeddings-schema.html",
)
INDEX_PURPOSE = "GENERIC_INDEX"
QUERY_PURPOSE = "IMAGE_RETRIEVAL"


def _params(dim: int, purpose: str, body: str) -> str:
    return ('{"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {"embeddingPurpose":'
            f' "{purpose}", "embeddingDimension": {dim}, {body}}}}}')


class NovaFormat(ModelFormat):
    """Nova Multimodal Embeddings' synchronous request and response JSON."""

    spec = SPEC

    @classmethod
    def image_body(cls, images: Sequence[bytes], dim: int) -> str:
        (image,) = images
        source = f'{{"bytes": "{b64(image)}"}}'
        return _params(dim, INDEX_PURPOSE, '"image": {"format": "jpeg", "detailLevel":'
                       f' "STANDARD_IMAGE", "source": {source}}}')

    @classmethod
    def s3_image_body(cls, uri: str, image_format: str, dim: int) -> str:
        """An image read by Bedrock from S3 (``s3Location``): nothing is downloaded here."""
        image = {"format": image_format, "detailLevel": "STANDARD_IMAGE",
                 "source": {"s3Location": {"uri": uri}}}
        return _params(dim, INDEX_PURPOSE, f'"image": {json.dumps(image)}')

    @classmethod
    def text_body(cls, text: str, dim: int) -> str:
        value = json.dumps({"truncationMode": "END", "value": text[: SPEC.max_text_chars]})
        return _params(dim, QUERY_PURPOSE, f'"text": {value}')

    @classmethod
    def vectors(cls, response: dict[str, Any]) -> list[list[float]]:
        items = response.get("embeddings")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise EmbedFailed("model returned no embeddings", permanent=False)
        return [item.get("embedding") for item in items]

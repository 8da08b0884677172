"""imgrag: image retrieval over S3 or a folder — Amazon Bedrock embeddings in ChromaDB.

The notebook functions of the original proof of concept are importable from here
(``from imgrag import query_images, show_hit_images``); see :mod:`imgrag.notebook`.
They load on first use, so ``import imgrag.normalize`` and the CLIs stay light.
"""

from __future__ import annotations

from typing import Any

_NOTEBOOK_API = (
    "ImageCollection",
    "ImageRecord",
    "build_image_records",
    "download_s3_objects",
    "get_chroma_collection",
    "image_to_b64",
    "list_image_keys",
    "normalize_image_to_jpeg_bytes",
    "query_images",
    "show_hit_images",
    "summarize_images_with_openai",
    "titan_embed_image_safe",
    "titan_embed_text",
    "upsert_images_to_chroma",
)
__all__ = list(_NOTEBOOK_API)


def __getattr__(name: str) -> Any:
    if name in _NOTEBOOK_API:
        from imgrag import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'imgrag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NOTEBOOK_API})

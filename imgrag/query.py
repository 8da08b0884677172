"""Query: text (or an image) → embedding → nearest records in the store."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imgrag.embedders import Embedder
from imgrag.errors import ConfigError
from imgrag.records import Hit
from imgrag.store import ImageStore


def parse_where(text: str | None) -> dict[str, Any] | None:
    """A Chroma metadata filter given as JSON on the command line."""
    if not text:
        return None
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--where is not valid JSON: {exc.msg}") from None
    if not isinstance(where, dict):
        raise ConfigError("--where must be a JSON object, e.g. '{\"bucket\": \"photos\"}'")
    return where


def search_text(
    store: ImageStore,
    embedder: Embedder,
    text: str,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
) -> list[Hit]:
    """The ``k`` images closest to ``text``."""
    if not text.strip():
        raise ConfigError("the query text is empty")
    if k < 1:
        raise ConfigError("k must be at least 1")
    return store.query(embedder.embed_text(text), k=k, where=where)

"""Prefect task of the query flow: one search, embedding the query at most once."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from imgrag.query import LazyEmbedder, SearchRequest, run_search
from imgrag.records import Hit
from imgrag.settings import Settings
from tasks.retry import retry_unless_run_error


@task(name="search-images", retries=1, retry_condition_fn=retry_unless_run_error,
      cache_policy=NO_CACHE, persist_result=False)
def search_task(settings: dict[str, Any], request: SearchRequest) -> tuple[list[Hit], int]:
    """Embed the query (text, cached; or an example image) and search the collection.

    Returns the hits and the Bedrock text tokens billed (0 when the text was cached)."""
    s = Settings(**settings)
    embedder = LazyEmbedder(s)  # a cached text builds no Bedrock client
    return run_search(s, request, embedder=embedder), embedder.text_tokens

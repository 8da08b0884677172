"""Prefect task of the query flow: one search, embedding the query at most once."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from imgrag.query import LazyEmbedder, SearchReport, SearchRequest, run_search
from imgrag.records import Hit
from imgrag.settings import Settings
from tasks.retry import retry_unless_run_error


@task(name="search-images", retries=1, retry_condition_fn=retry_unless_run_error,
      cache_policy=NO_CACHE, persist_result=False)
def search_task(settings: dict[str, Any], request: SearchRequest) -> tuple[list[Hit], int]:
    """Embed the query (text, cached; or an example image) and search the collection.

    Returns the hits and the Bedrock text tokens billed (0 when the text was cached); the
    re-ranking's tokens and cost, and any warning, go to the run's log."""
    s = Settings(**settings)
    embedder = LazyEmbedder(s)  # a cached text builds no Bedrock client
    report = SearchReport()
    hits = run_search(s, request, embedder=embedder, report=report)
    logger = get_run_logger()
    for warning in report.warnings:
        logger.warning(warning)
    if report.rerank is not None and not report.rerank.warning:
        r = report.rerank
        logger.info("re-ranked by %s%s: %d prompt + %d completion tokens, est. $%.4f", r.model,
                    " (cached)" if r.cached else "", r.prompt_tokens, r.completion_tokens,
                    r.cost_usd)
    return hits, embedder.text_tokens

"""The query flow: text or an example image → embedding → nearest neighbours in the store,
filtered by metadata, with the hits published as a Prefect artifact. Deployments and UI runs
use it, and so does the CLI (``python -m flows.query``) when a Prefect API is configured."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import ValidationError

from flows.cli import config_error, settings_from_cli
from imgrag.filters import QueryFilters
from imgrag.query import SearchRequest, settings_for_collection
from imgrag.records import Hit
from imgrag.request import DEFAULT_RERANK_TOP
from tasks.query import search_task
from tasks.report import publish_query_hits


@flow(name="query-images", validate_parameters=True)
def query_flow(
    text: str | None = None,
    k: int = 8,
    where: dict | None = None,
    collection: str | None = None,
    dim: int | None = None,
    chroma_path: str | None = None,
    chroma_url: str | None = None,
    region: str | None = None,
    image: str | None = None,
    exclude_self: bool = False,
    filters: QueryFilters | None = None,
    max_distance: float | None = None,
    model: str | None = None,
    group_by: str = "video",
    negative: list[str] | None = None,
    cutoff: Literal["gap"] | None = None,
    text_match: Literal["auto", "on", "off"] = "auto",
    rerank: bool = False,
    rerank_top: int = DEFAULT_RERANK_TOP,
    rerank_model: str | None = None,
    store: str | None = None,
) -> list[Hit]:
    """The ``k`` indexed images closest to ``text``, the example ``image`` (a path or s3://
    URI) or both, minus the ``negative`` texts, within the metadata ``where``/``filters``,
    none farther than ``max_distance`` (or past the largest distance gap, ``cutoff="gap"``);
    ``group_by="video"`` makes one hit per video (its best frame), ``"none"`` one per frame;
    OCR text matches fused in (``text_match``); the top ``rerank_top`` re-ordered by an
    OpenAI vision model with ``rerank``.
    """
    settings = settings_for_collection(  # a query embeds with its collection's model
        settings_from_cli(collection=collection, chroma_path=chroma_path,
                          chroma_url=chroma_url, region=region, store_url=store),
        model=model, dim=dim)
    try:
        request = SearchRequest(text=text, image=image, k=k, where=where,
                                filters=filters or QueryFilters(), exclude_self=exclude_self,
                                max_distance=max_distance, group_by=group_by,
                                negative=negative or [], cutoff=cutoff, text_match=text_match,
                                rerank=rerank, rerank_top=rerank_top, rerank_model=rerank_model)
    except ValidationError as exc:  # deployment parameters: a one-line error, no traceback
        raise config_error(exc) from None
    hits, text_tokens = search_task(settings.public_dict(), request)
    publish_query_hits(request.label, settings.public_dict(), hits, text_tokens)
    return hits

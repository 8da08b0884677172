"""Vision re-ranking: the top hits' thumbnails and the query in ONE OpenAI request.

The images go as 512 px JPEGs labelled S1…Sn (no URIs leave the machine); the model answers
with structured output (a JSON schema): the labels in its order, one reason each. Answers
are cached on disk by (model, query, ids and ETags), so a repeated query costs no call.
Every failure (no key, an API error, a malformed answer) keeps the vector order and says
why in ``RerankOutcome.warning``: re-ranking never loses the hits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from imgrag.summarize import SUMMARY_IMAGE_SIDE, SummaryError, make_openai_client, openai_error

if TYPE_CHECKING:
    from imgrag.records import Hit
    from imgrag.thumbnails import ThumbnailLoader

RERANK_CACHE_NAME = "imgrag-rerank-cache.sqlite3"
SYSTEM_PROMPT = (
    "You re-rank image search results. The user gives a search query and images labelled "
    "S1, S2, … Order ALL the labels from the best match to the worst, judging only what is "
    "visible (text in the image counts), and give each a reason of at most one short line.")
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["ranking"],
    "properties": {"ranking": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["label", "reason"],
        "properties": {"label": {"type": "string"}, "reason": {"type": "string"}}}}},
}
log = logging.getLogger(__name__)


class RerankOutcome(BaseModel):
    """Re-ordered hits (or the given order, with a warning), and what the call cost."""

    hits: list[Any]  # list[Hit]
    model: str
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    warning: str | None = Field(None, description="Why the vector order was kept.")


class RerankCache:
    """(model, query, ids + ETags) → [(id, reason)], in SQLite; best effort like the text
    cache (an unreadable file answers nothing, an unwritable one stores nothing)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=5, check_same_thread=False)
            db.execute("CREATE TABLE IF NOT EXISTS rerank (key TEXT PRIMARY KEY, answer TEXT)")
            db.commit()
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            log.warning("re-rank cache disabled (%s): %s", path, exc)

    @staticmethod
    def key(model: str, query: str, hits: Sequence[Hit]) -> str:
        ids = [(h.id, str(h.metadata.get("etag", ""))) for h in hits]
        return hashlib.sha256(json.dumps([model, query, ids]).encode()).hexdigest()

    def get(self, key: str) -> list[tuple[str, str]] | None:
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT answer FROM rerank WHERE key = ?", (key,)).fetchone()
        return [tuple(pair) for pair in json.loads(row[0])] if row else None

    def put(self, key: str, order: list[tuple[str, str]]) -> None:
        if self._db is None:
            return
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO rerank VALUES (?, ?)",
                                 (key, json.dumps(order)))
                self._db.commit()
            except sqlite3.Error as exc:
                log.warning("re-rank cache not written: %s", exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def parse_ranking(content: str, labels: Sequence[str]) -> list[tuple[str, str]]:
    """(label, reason) in the model's order: known labels, each once; SummaryError when the
    answer is not the schema's JSON or names none of ``labels``."""
    try:
        ranking = json.loads(content)["ranking"]
        pairs = [(str(item["label"]).strip(), " ".join(str(item["reason"]).split()))
                 for item in ranking]
    except (ValueError, KeyError, TypeError):
        raise SummaryError("OpenAI re-rank answer is not the requested JSON") from None
    seen: dict[str, str] = {}
    for label, reason in pairs:
        if label in labels and label not in seen:
            seen[label] = reason
    if not seen:
        raise SummaryError("OpenAI re-rank answer names none of the images")
    return list(seen.items())


def _ask(client: Any, model: str, query: str, images: Sequence[tuple[str, str]]) -> Any:
    content: list[dict[str, Any]] = [{"type": "text", "text": f"Search query: {query}"}]
    for label, url in images:
        content += [{"type": "text", "text": label},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": content}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "rerank", "strict": True, "schema": SCHEMA}},
    )


def rerank(query: str, hits: Sequence[Hit], loader: ThumbnailLoader, *, model: str,
           top: int, cache: RerankCache | None = None, client: Any = None,
           prices: tuple[float, float] = (0.0, 0.0)) -> RerankOutcome:
    """The top ``top`` hits re-ordered by ``model`` (with reasons), the rest after them.

    ``prices``: USD per 1M input and output tokens, for the reported cost."""
    head, tail = list(hits[:top]), list(hits[top:])
    outcome = RerankOutcome(hits=list(hits), model=model)
    if len(head) < 2:
        return outcome
    key = RerankCache.key(model, query, head)
    order = cache.get(key) if cache is not None else None
    if order is not None:
        outcome.cached = True
    else:
        try:
            order = _call(query, head, loader, model, client, outcome)
        except SummaryError as exc:
            outcome.warning = f"re-ranking skipped, vector order kept: {exc}"
            return outcome
        if cache is not None:
            cache.put(key, order)
    outcome.cost_usd = round((outcome.prompt_tokens * prices[0]
                              + outcome.completion_tokens * prices[1]) / 1e6, 6)
    by_id = {h.id: h for h in head}
    ranked = [by_id[rid].model_copy(update={"reason": reason})
              for rid, reason in order if rid in by_id]
    ranked += [h for h in head if h.id not in {r.id for r in ranked}]
    outcome.hits = [h.model_copy(update={"rank": rank})
                    for rank, h in enumerate(ranked + tail, start=1)]
    return outcome


def _call(query: str, head: Sequence[Hit], loader: ThumbnailLoader, model: str, client: Any,
          outcome: RerankOutcome) -> list[tuple[str, str]]:
    """One request; (id, reason) in the model's order. SummaryError on any failure."""
    client = client or make_openai_client()
    thumbs = loader.load(head, SUMMARY_IMAGE_SIDE)
    shown = [(h, t.data_url) for h, t in zip(head, thumbs, strict=True) if t.data_url]
    if len(shown) < 2:
        raise SummaryError("fewer than two hit images could be loaded")
    labels = {f"S{i}": h.id for i, (h, _) in enumerate(shown, start=1)}
    import openai  # present: the client above is one

    try:
        completion = _ask(client, model, query,
                          [(label, url) for label, (_, url) in zip(labels, shown, strict=True)])
    except openai.OpenAIError as exc:
        raise openai_error(exc, model, client) from None
    usage = getattr(completion, "usage", None)
    outcome.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    outcome.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    choice = completion.choices[0] if completion.choices else None
    content = (choice.message.content or "") if choice else ""
    return [(labels[label], reason) for label, reason in parse_ranking(content, list(labels))]

"""Hybrid ranking: vector hits fused with OCR text matches by reciprocal rank fusion.

The text side is Chroma's own document search (``where_document`` ``$regex``, whole words,
case-insensitive) over the OCR text stored with each record, so it can never disagree with
the vectors: both live in one record, written by one upsert and removed by one delete.
Matches are ranked lexically (query terms found, then OCR confidence) and fused with the
vector ranking: score = Σ 1 / (RRF_K + rank) over the lists a record is in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imgrag.records import Hit
from imgrag.stores import VectorStore

RRF_K = 60  # the constant of Cormack et al. (2009); dampens the weight of the top ranks
TEXT_CANDIDATES = 200  # text matches read per query (a filter, not a ranking, in Chroma)
SNIPPET_CHARS = 80
STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of",
    "on", "or", "the", "to", "with", "photo", "photos", "image", "images", "picture",
    "pictures", "that", "this"))
_WORD = re.compile(r"\w+")


def query_terms(text: str) -> list[str]:
    """The words of a query worth matching in OCR text: lower case, 2+ characters, no
    stopwords, each once, in order."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if len(word) >= 2 and word not in STOPWORDS and word not in terms:
            terms.append(word)
    return terms


def terms_pattern(terms: Sequence[str]) -> str:
    """A case-insensitive whole-word regular expression for any of ``terms`` (words of
    ``\\w`` characters only, so nothing needs escaping; Python's and Chroma's syntax agree)."""
    return r"(?i)\b(?:" + "|".join(terms) + r")\b"


def snippet(text: str, terms: Sequence[str]) -> str:
    """The OCR text around the first match, on one line, matched words in [brackets]."""
    flat = " ".join(text.split())
    pattern = re.compile(terms_pattern(terms))
    first = pattern.search(flat)
    start = max(0, first.start() - SNIPPET_CHARS // 2) if first else 0
    window = flat[start : start + SNIPPET_CHARS]
    marked = pattern.sub(lambda m: f"[{m.group(0)}]", window)
    return ("…" if start else "") + marked + ("…" if start + SNIPPET_CHARS < len(flat) else "")


def _cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / norm if norm else 1.0


def text_hits(store: VectorStore, terms: Sequence[str], vector: Sequence[float],
              where: Mapping[str, Any] | None = None) -> list[Hit]:
    """Records whose OCR text holds any of ``terms``, best first: most terms found, then the
    OCR confidence; each with its cosine distance to ``vector`` and a snippet."""
    if not terms:
        return []
    pattern = re.compile(terms_pattern(terms))
    scored = []
    for rid, text, meta, vec in store.text_matches(terms_pattern(terms), TEXT_CANDIDATES,
                                                   where):
        found = {m.group(0).lower() for m in pattern.finditer(text)}
        scored.append((-len(found), -float(meta.get("ocr_confidence", 0.0)), rid, Hit(
            rank=0, id=rid, distance=_cosine_distance(vector, vec), metadata=meta,
            matched=["text"], snippet=snippet(text, terms))))
    scored.sort(key=lambda s: s[:3])
    return [hit.model_copy(update={"rank": rank})
            for rank, (*_, hit) in enumerate(scored, start=1)]


def fuse(vector_hits: Sequence[Hit], matches: Sequence[Hit], k: int) -> list[Hit]:
    """The top ``k`` of both rankings by reciprocal rank fusion; each hit says which lists
    it came from (``matched``) and carries the text match's snippet. On a tie the text match
    goes first: an exact word is the stronger evidence."""
    scores: dict[str, float] = {}
    merged: dict[str, Hit] = {}
    for hits, source in ((matches, "text"), (vector_hits, "vector")):
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
            known = merged.get(hit.id)
            if known is None:
                merged[hit.id] = hit.model_copy(update={"matched": [source]})
            else:
                merged[hit.id] = known.model_copy(update={"matched": ["vector", "text"]})
    order = sorted(merged, key=lambda rid: -scores[rid])  # stable: text order on ties
    return [merged[rid].model_copy(update={"rank": rank})
            for rank, rid in enumerate(order[:k], start=1)]

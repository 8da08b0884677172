"""What one search asks for, checked before anything heavy loads: the request, its raw
``where`` filter, and an example image reference. No store, no model, no boto3 here, so a
CLI rejects bad input in a fraction of a second."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from imgrag.errors import ConfigError
from imgrag.filters import QueryFilters
from imgrag.sources.s3_uri import parse_s3_uri

MAX_K = 10_000  # hits per search: a gallery, an export; more is a scan, not a search
MAX_WHERE_DEPTH = 16  # nested $and/$or levels of a raw filter
DEFAULT_RERANK_TOP = 12
_NEGATED = re.compile(r"(?:^|\s)-(\w[\w'-]*)")
FIELD_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
                             "$contains", "$not_contains"})
LOGICAL_OPERATORS = frozenset({"$and", "$or"})
GroupBy = Literal["video", "none"]


def validate_where(where: Any, depth: int = 0) -> None:
    """ConfigError unless ``where`` is a metadata filter of the shape Chroma documents:
    ``{field: value}``, ``{field: {$op: value}}`` or ``{$and|$or: [filters]}``, at most
    ``MAX_WHERE_DEPTH`` levels deep. Field names never start with ``$`` (Chroma would
    read ``{"$where": …}`` as a field and fail later, in the store)."""
    if depth > MAX_WHERE_DEPTH:
        raise ConfigError(f"invalid where filter: nested deeper than {MAX_WHERE_DEPTH} levels")
    if not isinstance(where, dict) or len(where) != 1:
        raise ConfigError("invalid where filter: each level must be an object with one key,"
                          " e.g. {\"bucket\": \"photos\"} or {\"$and\": [...]}")
    [(key, value)] = where.items()
    if key in LOGICAL_OPERATORS:
        if not isinstance(value, list) or len(value) < 2:
            raise ConfigError(f"invalid where filter: {key} takes a list of two or more filters")
        for part in value:
            validate_where(part, depth + 1)
        return
    if key.startswith("$"):
        raise ConfigError(f"invalid where filter: unknown operator {key!r} (fields never "
                          f"start with $; logical operators are $and, $or)")
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in FIELD_OPERATORS:
            raise ConfigError(f"invalid where filter on {key!r}: use one of "
                              f"{', '.join(sorted(FIELD_OPERATORS))}")
    elif not isinstance(value, str | int | float | bool):
        raise ConfigError(f"invalid where filter on {key!r}: compare with a string, number, "
                          f"boolean or an operator object")


def parse_where(text: str | None) -> dict[str, Any] | None:
    """A metadata filter given as JSON on the command line; ConfigError when it is not
    JSON or not a filter of the documented shape (the store checks the rest)."""
    if not text:
        return None
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--where is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"invalid where filter: nested deeper than {MAX_WHERE_DEPTH} "
                          "levels") from None
    if not isinstance(where, dict):
        raise ConfigError("--where must be a JSON object, e.g. '{\"bucket\": \"photos\"}'")
    validate_where(where)
    return where


class SearchRequest(BaseModel):
    """One search: a text, an example image or both, how many hits, what to keep, and how
    to rank them."""

    text: str | None = Field(None, description="What to look for; '-word' subtracts a word.")
    image: str | None = Field(None, description="Local path or s3:// URI of an example image.")
    negative: list[str] = Field(default_factory=list,
                                description="Texts whose vectors are subtracted (--not).")
    k: int = Field(8, ge=1, le=MAX_K)
    where: dict[str, Any] | None = None
    filters: QueryFilters = Field(default_factory=QueryFilters)
    exclude_self: bool = Field(False, description="Drop the example image's own record.")
    max_distance: float | None = Field(None, ge=0, description="Drop hits farther than this.")
    group_by: GroupBy = Field("video", description="video: one hit per video (its best"
                              " frame); none: every frame is a hit.")
    cutoff: Literal["gap"] | None = Field(
        None, description="'gap': drop the hits after the largest distance gap.")
    text_match: Literal["auto", "on", "off"] = Field(
        "auto", description="Fuse OCR text matches with the vector hits ('auto': when the "
        "collection has OCR text).")
    rerank: bool = Field(False, description="Re-order the top hits with an OpenAI vision model.")
    rerank_top: int = Field(DEFAULT_RERANK_TOP, ge=2, le=50)
    rerank_model: str | None = Field(None, description="Default: the summaries' model.")

    @field_validator("where")
    @classmethod
    def _where_shape(cls, where: dict[str, Any] | None) -> dict[str, Any] | None:
        if where is not None:
            try:
                validate_where(where)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return where

    @model_validator(mode="after")
    def _a_query(self) -> SearchRequest:
        if self.text is None and self.image is None:
            raise ValueError("give a query text, an example image, or both")
        if self.text is not None and not self.text.strip():
            raise ValueError("the query text is empty")
        if self.text is not None and self.image is None and not self.positive_text:
            raise ValueError("the query has only negative terms: say what to look for")
        if any(not n.strip() for n in self.negative):
            raise ValueError("a --not text is empty")
        return self

    @property
    def positive_text(self) -> str:
        """The query text without its ``-word`` terms ("" without a text)."""
        return " ".join(_NEGATED.sub(" ", self.text or "").split())

    @property
    def negatives(self) -> list[str]:
        """Texts to subtract: the ``-word`` terms of the text, then ``negative``."""
        return [*_NEGATED.findall(self.text or ""), *self.negative]

    @property
    def label(self) -> str:
        """How the query is shown in reports: the text, ``image <ref>``, or both."""
        parts = [self.text] if self.text is not None else []
        if self.image is not None:
            parts.append(f"image {self.image}")
        parts += [f"not {n}" for n in self.negative]
        return " + ".join(parts)


def image_ref_uri(ref: str) -> str:
    """The record id an image reference would have if indexed (``s3://…`` or ``file://…``)."""
    if ref.startswith("s3://"):
        bucket, key = parse_s3_uri(ref)
        if not key or key.endswith("/"):
            raise ConfigError(f"{ref!r} names a prefix, not an image object")
        return f"s3://{bucket}/{key}"
    return Path(ref).expanduser().resolve().as_uri()


def check_image_ref(ref: str) -> None:
    """ConfigError for a malformed S3 URI or a missing local file (reads nothing)."""
    image_ref_uri(ref)
    if not ref.startswith("s3://") and not Path(ref).expanduser().is_file():
        raise ConfigError(f"image file {ref!r} not found")

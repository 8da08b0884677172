"""The query flow: text → Titan text embedding → Chroma nearest neighbours.
``python -m flows.query --help`` for the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from flows.ingest import add_store_arguments
from imgrag.embedders import make_embedder
from imgrag.errors import ConfigError, ImgragError
from imgrag.query import parse_where, search_text
from imgrag.records import Hit
from imgrag.settings import Settings
from imgrag.store import ImageStore
from tasks.report import publish_query_hits


@task(name="search-text", retries=1, cache_policy=NO_CACHE, persist_result=False)
def search_text_task(settings: dict, text: str, k: int, where: dict | None) -> list[Hit]:
    """Embed the text and search the collection."""
    s = Settings(**settings)
    return search_text(ImageStore.open(s, create=False), make_embedder(s), text, k, where)


@flow(name="query-images", validate_parameters=True)
def query_flow(
    text: str,
    k: int = 8,
    where: dict | None = None,
    collection: str | None = None,
    dim: int | None = None,
    chroma_path: str | None = None,
    chroma_url: str | None = None,
    region: str | None = None,
) -> list[Hit]:
    """The ``k`` indexed images closest to ``text`` (optionally filtered by metadata)."""
    settings = Settings.from_overrides(collection=collection, dim=dim, chroma_path=chroma_path,
                                       chroma_url=chroma_url, region=region)
    hits = search_text_task(settings.public_dict(), text, k, where)
    publish_query_hits(text, settings.collection, hits)
    return hits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.query",
        description="Search indexed images by text: the text is embedded with Amazon Titan "
        "Multimodal Embeddings and the nearest images (cosine distance) are printed.",
    )
    parser.add_argument("text", help="what to look for, e.g. 'blue t-shirt'")
    parser.add_argument("-k", type=int, default=8, help="number of hits (default 8)")
    parser.add_argument("--where", help="Chroma metadata filter as JSON, "
                        "e.g. '{\"bucket\": \"photos\"}'")
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print hits as a JSON list of {id, distance, metadata}")
    return parser


def print_hits(hits: list[Hit], as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.as_json() for h in hits], indent=2))
        return
    if not hits:
        print("no hits")
    for hit in hits:
        print(f"{hit.rank:>3}  {hit.distance:.4f}  {hit.id}  {hit.metadata.get('size', '?')} B")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        where = parse_where(args.where)
        try:
            settings = Settings.from_overrides(
                collection=args.collection, dim=args.dim, chroma_path=args.chroma_path,
                chroma_url=args.chroma_url, region=args.region)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"invalid {first['loc'][0]}: {first['msg']}") from None
        ImageStore.open(settings, create=False)
        hits = query_flow(args.text, args.k, where, args.collection, args.dim,
                          args.chroma_path, args.chroma_url, args.region)
    except ImgragError as exc:
        print(f"imgrag: error: {exc}", file=sys.stderr)
        return 2
    print_hits(hits, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

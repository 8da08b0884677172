"""``python -m flows.query``: search the index from a terminal.

With a Prefect API configured (``PREFECT_API_URL`` or the active Prefect profile), the
search runs as the ``query-images`` flow (flows/query_flow.py), recorded with its hits
artifact like deployment and UI runs. Without one it calls the library directly: an
interactive query must not wait tens of seconds for a temporary Prefect server, so such
runs are not recorded in Prefect. ``--help``, flag errors and bad input import neither
Prefect nor Chroma nor boto3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flows.cli import (
    add_store_arguments,
    config_error,
    print_error,
    print_interrupted,
    quiet_gc,
    require_utf8,
    run_cli,
    safe_text,
    settings_from_cli,
)
from flows.prefect_api import configured_api_url, prefect_errors
from imgrag.errors import ConfigError, ImgragError
from imgrag.request import DEFAULT_RERANK_TOP
from imgrag.summarize import DEFAULT_OPENAI_MODEL, DEFAULT_SUMMARY_IMAGES

if TYPE_CHECKING:
    from imgrag.records import Hit
    from imgrag.request import SearchRequest
    from imgrag.settings import Settings
    from imgrag.summarize import Summary
    from imgrag.thumbnails import ThumbnailLoader


def __getattr__(name: str) -> Any:
    """``flows/query.py:query_flow``, the entrypoint of deployments made before the flow
    moved to flows/query_flow.py, keeps loading."""
    if name == "query_flow":
        from flows.query_flow import query_flow

        return query_flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.query",
        description="Search indexed images by text or by an example image: the query is "
        "embedded with the collection's model (the Amazon Bedrock model it was built with) and the "
        "nearest images (cosine distance) are printed. Repeated texts are answered from a "
        "local embedding cache.",
        epilog="Prefect: with PREFECT_API_URL set (or a Prefect profile that sets it), the "
        "search runs as the 'query-images' flow and is recorded there with its hits; "
        "without it, it runs directly in this process and is not recorded (no temporary "
        "Prefect server is started). Exit status: 0 on success; 2 on bad input, an "
        "unreachable store, model or Prefect API, or a failed --summarize (the hits are "
        "still printed); 130 when interrupted.",
    )
    parser.add_argument("text", nargs="?", help="what to look for, e.g. 'blue t-shirt'; a "
                        "'-word' is subtracted, e.g. 'beach -people'")
    parser.add_argument("-k", type=int, default=8, help="number of hits (default 8)")
    example = parser.add_argument_group("query by example")
    example.add_argument("--image", metavar="PATH_OR_S3_URI",
                         help="find images similar to this one (with TEXT or --text: both "
                         "in one model call, averaged)")
    example.add_argument("--text", dest="text_option", metavar="TEXT",
                         help="text to combine with --image, e.g. 'at night'")
    example.add_argument("--not", dest="negative", action="append", default=[],
                         metavar="TEXT", help="subtract this text's vector (repeatable; "
                         "each text is embedded once, then cached)")
    ranking = parser.add_argument_group("ranking")
    ranking.add_argument("--text-match", choices=("auto", "on", "off"), default="auto",
                         help="fuse OCR text matches (whole words) with the vector hits by "
                         "reciprocal rank fusion; auto: when the collection has OCR text "
                         "(default auto; free: no model call)")
    ranking.add_argument("--cutoff", choices=("gap",),
                         help="gap: drop the hits after the largest distance gap")
    ranking.add_argument("--rerank", action="store_true",
                         help="re-order the top hits with an OpenAI vision model (one "
                         "request, cached; on failure the order is kept with a warning)")
    ranking.add_argument("--rerank-top", type=int, default=DEFAULT_RERANK_TOP, metavar="N",
                         help=f"hits sent to --rerank (default {DEFAULT_RERANK_TOP})")
    example.add_argument("--exclude-self", action="store_true",
                         help="leave the example image's own record out of the hits")
    filters = parser.add_argument_group("filters (combined with AND)")
    filters.add_argument("--prefix", help="object key prefix, as in S3 (e.g. 'catalog/shoes/')")
    filters.add_argument("--bucket", help="only images from this bucket")
    filters.add_argument("--min-width", type=int, metavar="PX",
                         help="only images at least this wide (source pixels)")
    filters.add_argument("--modified-after", metavar="DATE",
                         help="only objects modified at or after DATE (YYYY-MM-DD or ISO "
                         "8601; UTC unless a zone is given)")
    filters.add_argument("--max-distance", type=float, metavar="D",
                         help="drop hits with a cosine distance above D (0..2)")
    filters.add_argument("--where", help="Chroma metadata filter as JSON, "
                         "e.g. '{\"bucket\": \"photos\"}'")
    parser.add_argument("--group-by", choices=("video", "none"), default="video",
                        help="video (default): one hit per video, at its best frame, with the "
                        "times of its other matching frames; none: every frame is a hit")
    add_store_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="print hits as a JSON list of {id, distance, metadata} (with "
                        "--summarize: an object {hits, summary, error})")
    output.add_argument("--html", metavar="PATH",
                        help="write a self-contained HTML gallery of the hits")
    output.add_argument("--contact-sheet", metavar="PATH",
                        help="write one PNG grid of the hits with captions")
    summary = parser.add_argument_group("summary (OpenAI; OPENAI_API_KEY, OPENAI_BASE_URL)")
    summary.add_argument("--summarize", action="store_true",
                         help="describe the top hits with an OpenAI vision model, citing "
                         "them as S1..Sn")
    summary.add_argument("--summary-images", type=int, default=DEFAULT_SUMMARY_IMAGES,
                         metavar="N", help=f"hits sent to the model (default "
                         f"{DEFAULT_SUMMARY_IMAGES})")
    summary.add_argument("--openai-model", default=DEFAULT_OPENAI_MODEL,
                         help=f"vision-capable chat model (default {DEFAULT_OPENAI_MODEL})")
    return parser


def build_request(args: argparse.Namespace) -> SearchRequest:
    """The search asked for on the command line; ConfigError on bad input."""
    from pydantic import ValidationError

    from imgrag.filters import QueryFilters, parse_date
    from imgrag.request import SearchRequest, check_image_ref, parse_where

    for flag in ("text", "text_option", "prefix", "bucket", "where", "collection"):
        require_utf8(flag, getattr(args, flag))
    for text in args.negative:
        require_utf8("not", text)
    if args.text is not None and args.text_option is not None:
        raise ConfigError("give the text once: as TEXT or as --text")
    if args.summary_images < 1:
        raise ConfigError("--summary-images must be at least 1")
    if args.exclude_self and args.image is None:
        raise ConfigError("--exclude-self needs --image")
    try:
        filters = QueryFilters(
            prefix=args.prefix, bucket=args.bucket, min_width=args.min_width,
            modified_after=parse_date(args.modified_after) if args.modified_after else None,
        )
        request = SearchRequest(
            text=args.text if args.text is not None else args.text_option, image=args.image,
            k=args.k, where=parse_where(args.where), filters=filters,
            exclude_self=args.exclude_self, max_distance=args.max_distance,
            negative=args.negative, cutoff=args.cutoff, text_match=args.text_match,
            rerank=args.rerank, rerank_top=args.rerank_top, rerank_model=args.openai_model,
            group_by=args.group_by,
        )
    except ValidationError as exc:
        raise config_error(exc) from None
    if request.image is not None:
        check_image_ref(request.image)  # before anything heavy starts: a quick one-line error
    return request


def search(request: SearchRequest, args: argparse.Namespace, settings: Settings) -> list[Hit]:
    """The hits: through the query flow when a Prefect API is configured (the run is
    recorded, re-ranking costs and warnings in its log), else directly in this process
    (they are printed on stderr)."""
    if configured_api_url():
        with prefect_errors():
            with quiet_gc():
                from flows.cli import hide_run_error_tracebacks
                from flows.query_flow import query_flow
            hide_run_error_tracebacks()
            return query_flow(
                request.text, request.k, request.where, args.collection, args.dim,
                args.chroma_path, args.chroma_url, args.region, request.image,
                request.exclude_self, request.filters, request.max_distance,
                negative=request.negative, cutoff=request.cutoff,
                text_match=request.text_match, rerank=request.rerank,
                rerank_top=request.rerank_top, rerank_model=request.rerank_model,
                model=args.model, group_by=request.group_by, store=args.store)
    with quiet_gc():
        from imgrag.query import LazyEmbedder, SearchReport, run_search
    report = SearchReport()
    hits = run_search(settings, request, embedder=LazyEmbedder(settings), report=report)
    for warning in report.warnings:
        print(f"imgrag: warning: {safe_text(warning)}", file=sys.stderr)
    outcome = report.rerank
    if outcome is not None and not outcome.warning:
        print(f"re-ranked by {outcome.model}{' (cached, no call)' if outcome.cached else ''}:"
              f" {outcome.prompt_tokens} prompt + {outcome.completion_tokens} completion "
              f"tokens, est. ${outcome.cost_usd:.4f}", file=sys.stderr)
    return hits


def print_hits(hits: list[Hit], as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.as_json() for h in hits], indent=2))
        return
    if not hits:
        print("no hits")
    from imgrag.video_records import frame_label

    for hit in hits:
        moment = frame_label(hit)
        why = f"  [{'+'.join(hit.matched)}]" if hit.matched else ""
        print(f"{hit.rank:>3}  {hit.distance:.4f}  {safe_text(hit.id)}  "
              f"{hit.metadata.get('size', '?')} B" + (f"  {moment}" if moment else "") + why)
        if hit.snippet:
            print(f"       text: {safe_text(hit.snippet)}")
        if hit.reason:
            print(f"       why: {safe_text(hit.reason)}")


def print_answer(
    hits: list[Hit], summary: Summary | None, error: str | None, as_json: bool
) -> None:
    """Hits and the --summarize outcome: text, or one JSON object {hits, summary, error}."""
    if as_json:
        print(json.dumps({"hits": [h.as_json() for h in hits],
                          "summary": summary.as_json() if summary else None,
                          "error": error}, indent=2))
        return
    print_hits(hits, as_json=False)
    if summary is not None:
        text = "\n".join(safe_text(line) for line in str(summary).splitlines())
        print(f"\nSummary ({summary.model}):\n{text}")


def write_outputs(args: argparse.Namespace, request: SearchRequest, settings: Settings,
                  hits: list[Hit], summary: Summary | None, loader: ThumbnailLoader) -> None:
    """The --html page and --contact-sheet PNG, thumbnails loaded once for both."""
    if not (args.html or args.contact_sheet):
        return
    from imgrag.gallery import (
        contact_sheet,
        human_bytes,
        render_html,
        write_contact_sheet,
        write_html,
    )

    thumbs = loader.load(hits)
    title = f'"{request.text}"' if request.image is None else f"similar to {request.label}"
    subtitle = f"collection {settings.collection} · k={request.k}"
    try:
        if args.html:
            page = render_html(hits, thumbs, title, subtitle=subtitle, summary=summary)
            path = write_html(args.html, page)
            print(f"wrote {path} ({human_bytes(path.stat().st_size)})", file=sys.stderr)
        if args.contact_sheet:
            sheet = contact_sheet(hits, thumbs, title, summary=summary)
            path = write_contact_sheet(args.contact_sheet, sheet)
            print(f"wrote {path} ({sheet.width}×{sheet.height} px, "
                  f"{human_bytes(path.stat().st_size)})", file=sys.stderr)
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ImgragError as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        return print_interrupted("query")


def _run(args: argparse.Namespace) -> int:
    request = build_request(args)
    settings = settings_from_cli(collection=args.collection, chroma_path=args.chroma_path,
                                 chroma_url=args.chroma_url, region=args.region,
                                 store_url=args.store)
    with quiet_gc():
        from imgrag.query import settings_for_collection
        from imgrag.summarize import SummaryError, summarize_hits
        from imgrag.thumbnails import ThumbnailLoader
    # the collection's model and dimension; a missing store: one line, before any work
    settings = settings_for_collection(settings, model=args.model, dim=args.dim)
    hits = search(request, args, settings)
    loader = ThumbnailLoader(settings)
    summary: Summary | None = None
    summary_error: SummaryError | None = None
    if args.summarize:
        try:
            summary = summarize_hits(request.text or "images similar to an example image",
                                     hits, settings, n_images=args.summary_images,
                                     model=args.openai_model, loader=loader)
        except SummaryError as exc:
            summary_error = exc
        print_answer(hits, summary, str(summary_error) if summary_error else None, args.json)
    else:
        print_hits(hits, args.json)
    write_outputs(args, request, settings, hits, summary, loader)
    if summary_error:
        return print_error(summary_error)
    return 0


if __name__ == "__main__":
    run_cli(main)

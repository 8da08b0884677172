"""``python -m imgrag.app``: serve the search page and API over one collection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from imgrag.cli import add_store_arguments, config_error, settings_from_cli
from imgrag.errors import ImgragError

from .server import check_bind, create_app, is_loopback
from .service import AppSettings, SearchService


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imgrag.app",
        description="Serve a search page and a JSON API (/docs) over one imgrag collection.",
        epilog="Exit status 2 with a one-line error on bad settings.",
    )
    parser.add_argument("--host", help="address to listen on (IMGRAG_APP_HOST, default "
                        "127.0.0.1); another than loopback needs IMGRAG_APP_TOKEN or "
                        "--allow-public")
    parser.add_argument("--port", type=int, help="port (IMGRAG_APP_PORT, default 8000)")
    parser.add_argument("--allow-public", action="store_true",
                        help="listen on a non-loopback address without a token")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    add_store_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_cli(collection=args.collection, dim=args.dim,
                                     model=args.model, chroma_path=args.chroma_path,
                                     chroma_url=args.chroma_url, region=args.region,
                                     store_url=args.store)
        try:
            app_settings = AppSettings(**{k: v for k, v in
                                          {"host": args.host, "port": args.port}.items()
                                          if v is not None})
        except ValidationError as exc:
            raise config_error(exc) from None
        check_bind(app_settings.host, app_settings.token is not None, args.allow_public)
    except ImgragError as exc:
        print(f"imgrag: error: {exc}", file=sys.stderr)
        return 2
    host = app_settings.host
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if is_loopback(host) else ["*"]
    service = SearchService(settings, app_settings)
    try:
        print(f"imgrag search app: collection {settings.collection!r} on "
              f"http://{host}:{app_settings.port}/ (API docs at /docs)", file=sys.stderr)
        uvicorn.run(create_app(service, hosts), host=host, port=app_settings.port,
                    access_log=args.access_log, log_level="warning")
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

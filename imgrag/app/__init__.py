"""The search app: a web page and a JSON API over one collection (``python -m imgrag.app``).

``service`` does the work (no HTTP), ``api`` maps it to routes and JSON errors, ``server``
builds the ASGI app with its security headers; ``static/`` holds the page. No Prefect here.
"""

from .server import create_app
from .service import AppSettings, SearchService

__all__ = ["AppSettings", "SearchService", "create_app"]

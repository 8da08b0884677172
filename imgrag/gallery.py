"""Hits → something to look at: a self-contained HTML page, one PNG contact sheet, or a
markdown table (a run artifact in Prefect's UI). A video frame's hit shows its time (and
the times of the video's other matching frames); in HTML it links to the video at that
time (``#t=``) when a browser can reach the video (``file://``, ``http(s)://``).

The HTML page embeds every thumbnail as a ``data:`` URI and carries a Content-Security-Policy
that allows nothing else (no scripts, no remote loads); every text taken from the store
(keys, URIs) is HTML-escaped. The contact sheet is a grid of thumbnails with a caption
under each (rank, distance, name, size) — the look of the original notebook's
``show_hit_images``. In markdown, text from the store or the query is escaped (and put in
code spans) so it cannot add links, images or HTML.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from imgrag.records import Hit
from imgrag.summarize import Summary
from imgrag.thumbnails import THUMBNAIL_SIDE, Thumbnail
from imgrag.video_records import frame_label

_BROWSABLE = ("file://", "http://", "https://")

_CSS = """
.imgrag{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;color:#222}
.imgrag h1{font-size:20px;margin:0 0 4px}
.imgrag .sub{color:#666;margin:0 0 16px}
.imgrag .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px}
.imgrag figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:8px;overflow:hidden}
.imgrag .img{height:230px;display:flex;align-items:center;justify-content:center;
 background:#eee}
.imgrag .img img{max-width:100%;max-height:100%;width:auto;height:auto}
.imgrag .missing{color:#a33;padding:12px;text-align:center;font-size:12px}
.imgrag figcaption{padding:8px 10px;font-size:12px}
.imgrag .uri{font-family:ui-monospace,Menlo,monospace;word-break:break-all;color:#444}
.imgrag .badge{background:#2f5fb3;color:#fff;border-radius:4px;padding:0 5px;margin-left:4px}
.imgrag .summary{background:#fff;border-left:4px solid #2f5fb3;padding:10px 14px;
 margin:0 0 16px;white-space:pre-wrap}
.imgrag .sources{margin:6px 0 0;padding-left:18px;white-space:normal}
""".strip()
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def human_bytes(size: object) -> str:
    """``52.1 KB``-style size, or ``?`` when unknown."""
    try:
        value = float(size)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "?"


def _dimensions(hit: Hit) -> str:
    width, height = hit.metadata.get("width"), hit.metadata.get("height")
    return f"{width} x {height} px" if width and height else "size unknown"


def _moment_html(hit: Hit) -> str:
    """A frame hit's time, linked to the video at that time when a browser can open it."""
    label = frame_label(hit)
    if not label:
        return ""
    if hit.id.startswith(_BROWSABLE):
        return f"<br><a href=\"{html.escape(hit.id)}\">&#9654; {html.escape(label)}</a>"
    return f"<br>{html.escape(label)}"


def _labels(hits: Sequence[Hit], summary: Summary | None) -> dict[str, str]:
    """Hit id → ``S1``… for the hits a summary was given."""
    return {s.id: s.label for s in summary.sources} if summary else {}


def render_fragment(
    hits: Sequence[Hit], thumbs: Sequence[Thumbnail], title: str, *,
    subtitle: str = "", summary: Summary | None = None,
) -> str:
    """The gallery as an HTML fragment (a ``<div>`` with its own style), for notebooks."""
    labels = _labels(hits, summary)
    esc = html.escape
    parts = [f"<div class=\"imgrag\"><style>{_CSS}</style>", f"<h1>{esc(title)}</h1>"]
    count = f"{len(hits)} hit{'s' if len(hits) != 1 else ''}"
    parts.append(f"<p class=\"sub\">{esc(' · '.join(p for p in (count, subtitle) if p))}</p>")
    if summary is not None:
        items = "".join(f"<li><b>{esc(s.label)}</b> <span class=\"uri\">{esc(s.id)}</span></li>"
                        for s in summary.sources)
        parts.append(f"<section class=\"summary\"><b>Summary</b> ({esc(summary.model)})\n"
                     f"{esc(summary.text)}<ol class=\"sources\">{items}</ol></section>")
    parts.append("<div class=\"grid\">")
    for hit, thumb in zip(hits, thumbs, strict=True):
        name = str(hit.metadata.get("key") or hit.id)
        if thumb.data_url:
            image = (f"<img src=\"{thumb.data_url}\" width=\"{thumb.width}\" "
                     f"height=\"{thumb.height}\" alt=\"{esc(f'rank {hit.rank}: {name}')}\">")
        else:
            image = f"<div class=\"missing\">image unavailable: {esc(thumb.error or '?')}</div>"
        badge = f"<span class=\"badge\">{esc(labels[hit.id])}</span>" if hit.id in labels else ""
        parts.append(
            f"<figure id=\"hit-{hit.rank}\"><div class=\"img\">{image}</div><figcaption>"
            f"<b>#{hit.rank}</b>{badge} · distance {hit.distance:.4f}<br>"
            f"<span class=\"uri\">{esc(hit.id)}</span>{_moment_html(hit)}<br>"
            f"{esc(_dimensions(hit))} · {esc(human_bytes(hit.metadata.get('size')))}"
            f"{_why(hit)}</figcaption></figure>"
        )
    parts.append("</div></div>")
    return "\n".join(parts)


def _why(hit: Hit) -> str:
    """Caption lines saying why a hit is there: matched lists, OCR snippet (the matched
    words marked), the re-ranking reason; "" for a plain vector search."""
    lines = []
    if hit.matched:
        lines.append(f"matched: {html.escape(', '.join(hit.matched))}")
    if hit.snippet:
        marked = re.sub(r"\[([^\]]*)\]", r"<mark>\1</mark>", html.escape(hit.snippet))
        lines.append(f"text: {marked}")
    if hit.reason:
        lines.append(f"why: {html.escape(hit.reason)}")
    return "".join(f"<br>{line}" for line in lines)


def render_html(
    hits: Sequence[Hit], thumbs: Sequence[Thumbnail], title: str, *,
    subtitle: str = "", summary: Summary | None = None,
) -> str:
    """A complete, self-contained HTML page of the hits."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = " · ".join(p for p in (subtitle, f"generated {stamp}") if p)
    body = render_fragment(hits, thumbs, title, subtitle=subtitle, summary=summary)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>imgrag · {html.escape(title)}</title></head>\n"
        f"<body style=\"margin:24px;background:#fafafa\">\n{body}\n</body></html>\n"
    )


def write_html(path: str | Path, page: str) -> Path:
    """Write a rendered page (UTF-8) and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# -- markdown (run artifacts) ----------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")


def markdown_text(text: str) -> str:
    """``text`` as one line of literal markdown: punctuation escaped, HTML as entities."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))
    return html.escape(escaped, quote=False)


def _code(text: str) -> str:
    """``text`` as an inline code span that survives a table cell (pipes, backticks)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    one_line = " ".join(text.split()).replace("|", "\\|")  # GFM splits cells even in code
    return f"{fence} {one_line} {fence}"


def render_markdown(
    hits: Sequence[Hit], thumbs: Sequence[Thumbnail], title: str, *, subtitle: str = ""
) -> str:
    """The hits as a markdown table under a heading, with ``data:`` thumbnails for the first
    ``len(thumbs)`` hits (the others are listed without a picture)."""
    lines = [f"### {markdown_text(title)}", ""]
    if subtitle:
        lines += [markdown_text(subtitle), ""]
    lines += ["| rank | distance | image | source | size |", "|---|---|---|---|---|"]
    for i, hit in enumerate(hits):
        picture = ""
        if i < len(thumbs):
            thumb = thumbs[i]
            picture = (f"![thumbnail]({thumb.data_url})" if thumb.data_url else
                       f"(no preview: {markdown_text(thumb.error or 'unavailable')})")
        size = markdown_text(str(hit.metadata.get("size", "")))
        moment = frame_label(hit)
        source = f"{_code(hit.id)} {markdown_text(moment)}" if moment else _code(hit.id)
        lines.append(f"| {hit.rank} | {hit.distance:.4f} | {picture} | {source} | {size} |")
    return "\n".join(lines)


# -- contact sheet ---------------------------------------------------------------------

SHEET_COLUMNS = 4
_PAD = 12
_FONT_SIZE = 13
_LINE = 17
_CAPTION_LINES = 3
_HEADER = 40


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    """``text`` cut (with ``...``) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(
    hits: Sequence[Hit], thumbs: Sequence[Thumbnail], title: str, *,
    columns: int = SHEET_COLUMNS, tile: int = THUMBNAIL_SIDE, summary: Summary | None = None,
) -> Image.Image:
    """One RGB image: a title line, then a grid of thumbnails with three caption lines each."""
    labels = _labels(hits, summary)
    cols = max(1, min(columns, len(hits)))
    rows = max(1, math.ceil(len(hits) / cols))
    cell_w, cell_h = tile + _PAD, tile + _CAPTION_LINES * _LINE + 6 + _PAD
    sheet = Image.new("RGB", (_PAD + cols * cell_w, _HEADER + rows * cell_h + _PAD // 2),
                      (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font, title_font = _font(_FONT_SIZE), _font(_FONT_SIZE + 5)
    draw.text((_PAD, 10), _fit(draw, title, title_font, sheet.width - 2 * _PAD),
              fill=(20, 20, 20), font=title_font)
    if not hits:
        draw.text((_PAD, _HEADER + 8), "no hits", fill=(120, 120, 120), font=font)
    for index, (hit, thumb) in enumerate(zip(hits, thumbs, strict=True)):
        x = _PAD + (index % cols) * cell_w
        y = _HEADER + (index // cols) * cell_h
        draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(232, 232, 232))
        if thumb.data is not None:
            with Image.open(io.BytesIO(thumb.data)) as im:
                im = im.convert("RGB")
                im.thumbnail((tile, tile))
                sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        else:
            message = _fit(draw, f"unavailable: {thumb.error or '?'}", font, tile - 8)
            draw.text((x + 4, y + tile // 2 - _LINE // 2), message, fill=(170, 50, 50),
                      font=font)
        name = str(hit.metadata.get("key") or hit.id).rsplit("/", 1)[-1]
        moment = frame_label(hit)
        name = f"{name}  {moment}" if moment else name
        label = f"  {labels[hit.id]}" if hit.id in labels else ""
        lines = (
            f"#{hit.rank}  distance {hit.distance:.4f}{label}",
            name,
            f"{_dimensions(hit)} · {human_bytes(hit.metadata.get('size'))}",
        )
        for n, line in enumerate(lines):
            draw.text((x, y + tile + 4 + n * _LINE), _fit(draw, line, font, tile),
                      fill=(30, 30, 30) if n < 2 else (100, 100, 100), font=font)
    return sheet


def write_contact_sheet(path: str | Path, sheet: Image.Image) -> Path:
    """Save a contact sheet as an optimized PNG and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, "PNG", optimize=True)
    return out

"""Thumbnails (local copy → cache → source), the HTML gallery and the PNG contact sheet."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from imgrag.gallery import contact_sheet, markdown_text, render_html, render_markdown
from imgrag.query import SearchRequest, run_search
from imgrag.records import Hit
from imgrag.settings import Settings
from imgrag.summarize import Summary, SummarySource
from imgrag.thumbnails import THUMBNAIL_SIDE, Thumbnail, ThumbnailLoader, cache_name
from tests.conftest import COLOURS, image_bytes
from tests.retrieval import CATALOG, Catalog, index_source


def all_hits(catalog: Catalog, text: str = "red") -> list[Hit]:
    return run_search(catalog.settings, SearchRequest(text=text, k=len(CATALOG)))


def centre_colour(jpeg: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB").getpixel((im.width // 2, im.height // 2))


def close_to(rgb, expected, tol=30) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, expected, strict=True))


def test_thumbnails_come_from_the_source_then_from_the_cache(catalog, tmp_path):
    hits = all_hits(catalog)
    loader = ThumbnailLoader(catalog.settings, cache_dir=tmp_path / "thumbs")
    first = loader.load(hits)
    assert [t.origin for t in first] == ["source"] * len(hits)
    for hit, thumb in zip(hits, first, strict=True):
        colour = CATALOG[hit.metadata["key"]][0]
        assert close_to(centre_colour(thumb.data), COLOURS[colour])
        assert max(thumb.width, thumb.height) <= THUMBNAIL_SIDE
    again = ThumbnailLoader(catalog.settings, cache_dir=tmp_path / "thumbs").load(hits)
    assert [t.origin for t in again] == ["cache"] * len(hits)
    assert [t.data for t in again] == [t.data for t in first]


def test_cache_files_are_named_by_hash_never_by_key_text(catalog, tmp_path):
    hits = all_hits(catalog)
    ThumbnailLoader(catalog.settings, cache_dir=tmp_path / "thumbs").load(hits)
    names = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert len(names) == len(hits)
    assert all(re.fullmatch(r"[0-9a-f]{64}\.jpg", n) for n in names)
    assert cache_name("s3://b/k.jpg", '"e1"', 256) != cache_name("s3://b/k.jpg", '"e2"', 256)


def test_a_local_copy_wins_over_cache_and_source(catalog, tmp_path):
    hit = all_hits(catalog)[0]
    copy = tmp_path / "copy.png"
    copy.write_bytes(image_bytes(COLOURS["blue"], size=(100, 80), fmt="PNG"))
    thumb = ThumbnailLoader(catalog.settings, local_paths={hit.id: copy},
                            cache_dir=tmp_path / "thumbs").load_one(hit)
    assert thumb.origin == "local" and close_to(centre_colour(thumb.data), COLOURS["blue"])


def test_a_file_changed_since_indexing_is_not_shown_as_the_hit(catalog, tmp_path):
    key = "archive/yellow-old.jpg"
    hit = next(h for h in all_hits(catalog) if h.metadata["key"] == key)
    path = catalog.path(key)
    original = path.read_bytes()
    try:
        path.write_bytes(image_bytes(COLOURS["green"], seed=99))
        thumb = ThumbnailLoader(catalog.settings, cache_dir=tmp_path / "t").load_one(hit)
    finally:
        path.write_bytes(original)
    assert thumb.data is None and "changed" in (thumb.error or "")


def test_s3_hits_are_fetched_at_their_indexed_etag(s3, bucket, bedrock, tmp_path):
    s3.put_object(Bucket=bucket, Key="shop/red.jpg", Body=image_bytes(COLOURS["red"]))
    s3.put_object(Bucket=bucket, Key="shop/blue.jpg", Body=image_bytes(COLOURS["blue"]))
    settings = Settings(chroma_path=tmp_path / "store")
    index_source(settings, f"s3://{bucket}/shop/")
    hits = run_search(settings, SearchRequest(text="red", k=2))
    thumbs = ThumbnailLoader(settings).load(hits)
    assert [t.origin for t in thumbs] == ["source", "source"]
    assert close_to(centre_colour(thumbs[0].data), COLOURS["red"])

    s3.put_object(Bucket=bucket, Key="shop/blue.jpg", Body=image_bytes(COLOURS["green"]))
    fresh = ThumbnailLoader(settings, cache_dir=tmp_path / "empty").load(hits)
    assert fresh[0].data is not None
    assert fresh[1].data is None and "changed" in fresh[1].error
    cached = ThumbnailLoader(settings).load(hits)  # the indexed version, cached earlier
    assert close_to(centre_colour(cached[1].data), COLOURS["blue"])


def img_srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_html_gallery_is_self_contained_and_shows_every_hit(catalog):
    hits = all_hits(catalog)
    thumbs = ThumbnailLoader(catalog.settings).load(hits)
    page = render_html(hits, thumbs, '"red"', subtitle="collection catalog")
    srcs = img_srcs(page)
    assert len(srcs) == len(hits)
    for src, thumb in zip(srcs, thumbs, strict=True):
        assert src.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == thumb.data
    for hit in hits:
        assert f"#{hit.rank}</b>" in page and f"{hit.distance:.4f}" in page and hit.id in page
    assert "default-src 'none'" in page  # nothing loads from anywhere else
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_html_escapes_text_from_the_store():
    hit = Hit(rank=1, id='s3://b/<script>alert("x")</script>.jpg', distance=0.5,
              metadata={"key": '<script>alert("x")</script>.jpg', "size": 10})
    page = render_html([hit], [Thumbnail(id=hit.id, error="<b>gone</b>")], "<i>q</i>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>gone</b>" not in page and "<i>q</i>" not in page


def test_html_marks_the_images_a_summary_cites(catalog):
    hits = all_hits(catalog)[:2]
    summary = Summary(model="m", query="red", text="Both match: [S1] [S2].",
                      sources=[SummarySource(label="S1", id=hits[0].id),
                               SummarySource(label="S2", id=hits[1].id)])
    page = render_html(hits, ThumbnailLoader(catalog.settings).load(hits), "q", summary=summary)
    assert "Both match: [S1] [S2]." in page
    assert page.index('class="badge">S1') < page.index('id="hit-2"')


def test_contact_sheet_is_a_grid_of_the_hits_with_captions(catalog):
    hits = all_hits(catalog)  # 6 hits → 4 columns, 2 rows
    thumbs = ThumbnailLoader(catalog.settings).load(hits)
    sheet = contact_sheet(hits, thumbs, '"red"')
    assert sheet.mode == "RGB"
    assert sheet.width == 12 + 4 * (THUMBNAIL_SIDE + 12)
    cell_h = (sheet.height - 40 - 6) // 2
    assert cell_h > THUMBNAIL_SIDE  # room for the caption lines under each thumbnail
    for index, hit in enumerate(hits):
        x = 12 + (index % 4) * (THUMBNAIL_SIDE + 12) + THUMBNAIL_SIDE // 2
        y = 40 + (index // 4) * cell_h + THUMBNAIL_SIDE // 2
        colour = CATALOG[hit.metadata["key"]][0]
        assert close_to(sheet.getpixel((x, y)), COLOURS[colour]), hit.metadata["key"]
        caption = sheet.crop((x - THUMBNAIL_SIDE // 2, y + THUMBNAIL_SIDE // 2 + 2,
                              x + THUMBNAIL_SIDE // 2, y + THUMBNAIL_SIDE // 2 + 50))
        assert min(caption.convert("L").getdata()) < 100  # dark caption text is drawn


def test_contact_sheet_draws_a_placeholder_for_a_missing_image():
    hit = Hit(rank=1, id="s3://b/k.jpg", distance=0.1, metadata={"key": "k.jpg"})
    sheet = contact_sheet([hit], [Thumbnail(id=hit.id, error="deleted")], "q")
    assert sheet.width == 12 + THUMBNAIL_SIDE + 12
    assert sheet.getpixel((12 + 5, 40 + 5)) == (232, 232, 232)  # the grey tile


def test_every_thumbnail_size_of_a_hit_costs_one_fetch_of_its_original(
    s3, bucket, bedrock, tmp_path, s3_requests
):
    for name in ("red", "blue"):
        s3.put_object(Bucket=bucket, Key=f"shop/{name}.jpg",
                      Body=image_bytes(COLOURS[name], size=(800, 600)))
    settings = Settings(chroma_path=tmp_path / "store")
    index_source(settings, f"s3://{bucket}/shop/")
    hits = run_search(settings, SearchRequest(text="red", k=2))
    fetched = s3_requests.object_gets(bucket)

    large = ThumbnailLoader(settings).load(hits, side=512)  # a summary's images
    assert s3_requests.object_gets(bucket) == fetched + 2
    gallery = ThumbnailLoader(settings).load(hits)
    artifact = ThumbnailLoader(settings).load(hits, side=96)

    assert s3_requests.object_gets(bucket) == fetched + 2  # nothing fetched again
    assert [max(t.width, t.height) for t in large] == [512, 512]
    assert [(max(t.width, t.height), t.origin) for t in gallery] == [(THUMBNAIL_SIDE, "cache")] * 2
    assert [max(t.width, t.height) for t in artifact] == [96, 96]
    assert close_to(centre_colour(artifact[0].data), COLOURS["red"])


def test_markdown_of_hits_escapes_the_query_and_store_text():
    hit = Hit(rank=1, id="s3://b/x|`y`.jpg", distance=0.25, metadata={"size": "<b>9</b>"})
    query = "red **shirt** [click](http://evil.example) <img src=x onerror=alert(1)> | # _x_\nline"
    thumbs = [Thumbnail(id=hit.id, data=image_bytes(COLOURS["red"]), width=64, height=48)]

    markdown = render_markdown([hit], thumbs, f"Query: {query}", subtitle="k=1 <i>")

    heading, _, subtitle, _, _, _, row = markdown.splitlines()
    assert heading == (r"### Query: red \*\*shirt\*\* \[click\](http://evil.example) "
                       r"&lt;img src=x onerror=alert(1)&gt; \| \# \_x\_ line")
    assert subtitle == "k=1 &lt;i&gt;"
    assert row.startswith("| 1 | 0.2500 | ![thumbnail](data:image/jpeg;base64,")
    assert row.endswith(r"| `` s3://b/x\|`y`.jpg `` | &lt;b&gt;9&lt;/b&gt; |")
    assert markdown_text("a\\b") == "a\\\\b"

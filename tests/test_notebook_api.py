"""The proof of concept's notebook functions, importable from ``imgrag``, end to end against
moto S3 and the Titan emulator."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import imgrag
from imgrag import (
    build_image_records,
    download_s3_objects,
    get_chroma_collection,
    image_to_b64,
    list_image_keys,
    normalize_image_to_jpeg_bytes,
    query_images,
    show_hit_images,
    summarize_images_with_openai,
    titan_embed_image_safe,
    titan_embed_text,
    upsert_images_to_chroma,
)
from imgrag.errors import StoreError
from imgrag.ledger import FailureLedger
from imgrag.normalize import NormalizeError
from imgrag.pipeline import LEDGER_NAME
from imgrag.settings import Settings
from imgrag.sources import open_source
from imgrag.summarize import make_openai_client
from imgrag.sync import ScopePlanner
from tests.conftest import COLOURS, image_bytes
from tests.fake_openai import API_KEY, FakeOpenAI

SHOP = {
    "shop/red-shirt.jpg": image_bytes(COLOURS["red"], size=(320, 240), seed=1),
    "shop/blue-mug.png": image_bytes(COLOURS["blue"], size=(200, 150), fmt="PNG", seed=2),
    "shop/green-hat.jpg": image_bytes(COLOURS["green"], seed=3),
    "shop/broken.jpg": b"<html>an error page saved as .jpg</html>",
}


@pytest.fixture
def shop(s3, bucket, bedrock, tmp_path, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("IMGRAG_CHROMA_PATH", str(tmp_path / "store"))
    for key, body in SHOP.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="shop/notes.txt", Body=b"not an image")
    yield bucket


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return im.size


def test_the_typical_notebook_flow(shop, s3, bedrock, tmp_path):
    keys = list_image_keys(shop, "shop/", max_keys=200)
    assert keys == sorted(SHOP)  # the text file is not an image key
    assert list_image_keys(shop, "shop/", max_keys=2) == keys[:2]

    paths = download_s3_objects(shop, [*keys, "shop/missing.jpg"], tmp_path / "data")
    assert paths[-1] is None  # a failed download is reported, not raised
    for key, path in zip(keys, paths, strict=False):
        assert re.fullmatch(r"[0-9a-f]{32}\.(jpg|png)", path.name)  # never the key text
        assert path.read_bytes() == SHOP[key]

    records = build_image_records([*keys, "shop/missing.jpg"], paths)
    assert [r.id for r in records] == [f"s3://{shop}/{k}" for k in keys]
    assert [r.etag for r in records] == [s3.head_object(Bucket=shop, Key=k)["ETag"] for k in keys]

    collection = get_chroma_collection()
    failed = upsert_images_to_chroma(collection, records)
    assert [(f.id, f.stage) for f in failed] == [(f"s3://{shop}/shop/broken.jpg", "normalize")]
    assert collection.count() == 3 and bedrock.stats.image_calls == 3

    bedrock.reset_stats()
    assert len(upsert_images_to_chroma(collection, records)) == 1  # broken fails again
    assert bedrock.stats.requests == 0  # indexed records at the same ETag are not re-embedded

    hits = query_images(collection, "something red", k=2)
    assert hits[0].id == f"s3://{shop}/shop/red-shirt.jpg"
    similar = query_images(collection, image=hits[0].id, k=1, exclude_self=True)
    assert similar[0].id != hits[0].id

    s3_to_local = {r.id: r.local_path for r in records}
    page = show_hit_images(hits, s3_to_local, collection=collection)
    assert page.count('<img src="data:image/jpeg;base64,') == 2


def index_shop(shop: str, tmp_path: Path) -> tuple[list, object]:
    """The notebook's usual flow: list, download, build records, upsert; (records, collection)."""
    keys = list_image_keys(shop, "shop/")
    records = build_image_records(keys, download_s3_objects(shop, keys, tmp_path / "data"))
    collection = get_chroma_collection()
    upsert_images_to_chroma(collection, records)
    return records, collection


def test_notebook_records_are_the_ingest_flows_records(shop, s3, tmp_path):
    _, collection = index_shop(shop, tmp_path)

    settings = Settings()
    source = open_source(f"s3://{shop}/shop/", settings)
    ledger = FailureLedger(settings.resolved_state_dir / LEDGER_NAME, settings.collection)
    planner = ScopePlanner(source.scope, collection.store.manifest(shop, source.scope),
                           ledger.known(source.scope))
    todo = list(planner.todo(source.list_objects()))
    ledger.close()
    assert todo == []  # a CLI ingest after the notebook would embed nothing
    assert (planner.plan.unchanged, planner.plan.skipped) == (3, 1)


def test_local_copies_are_shown_even_when_the_source_is_gone(shop, s3, tmp_path):
    records, collection = index_shop(shop, tmp_path)
    hits = query_images(collection, "red", k=1)
    s3.delete_object(Bucket=shop, Key="shop/red-shirt.jpg")

    with_copies = show_hit_images(hits, {r.id: r.local_path for r in records},
                                  collection=collection)
    assert with_copies.count("<img ") == 1
    without = show_hit_images(hits, collection=collection)
    assert "<img " not in without and "image unavailable" in without


def test_image_helpers(tmp_path, bedrock):
    png = tmp_path / "wide.png"
    png.write_bytes(image_bytes(COLOURS["yellow"], size=(3000, 200), fmt="PNG"))
    assert jpeg_size(normalize_image_to_jpeg_bytes(png)) == (2048, 137)
    assert max(jpeg_size(normalize_image_to_jpeg_bytes(png.read_bytes(), max_side=100))) == 100
    with pytest.raises(NormalizeError):
        normalize_image_to_jpeg_bytes(b"not an image")

    assert max(jpeg_size(base64.b64decode(image_to_b64(png)))) == 512

    assert len(titan_embed_image_safe(png)) == 1024
    assert len(titan_embed_image_safe(png.read_bytes(), dim=256)) == 256
    assert titan_embed_image_safe(b"<html>") is None
    assert len(titan_embed_text("a yellow banner", dim=384)) == 384


def test_a_collection_refuses_another_vector_space(tmp_path, bedrock):
    get_chroma_collection(tmp_path / "store", "things", dim=1024)
    with pytest.raises(StoreError, match="dim 1024"):
        get_chroma_collection(tmp_path / "store", "things", dim=256)


def test_summarize_images_with_openai_cites_uris(shop, tmp_path, monkeypatch):
    records, collection = index_shop(shop, tmp_path)
    hits = query_images(collection, "red", k=3)
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        summary = summarize_images_with_openai(
            "red", hits, n_images=2, s3_to_local={r.id: r.local_path for r in records},
            client=make_openai_client(max_retries=0))
    text = str(summary)
    assert "[S1]" in text and f"S1  {hits[0].id}" in text and f"S2  {hits[1].id}" in text


def test_every_poc_function_is_exported_with_a_docstring():
    names = ("list_image_keys", "download_s3_objects", "build_image_records",
             "normalize_image_to_jpeg_bytes", "titan_embed_image_safe", "titan_embed_text",
             "get_chroma_collection", "upsert_images_to_chroma", "query_images",
             "show_hit_images", "image_to_b64", "summarize_images_with_openai")
    for name in names:
        function = getattr(imgrag, name)
        assert callable(function) and function.__doc__, name
        assert name in dir(imgrag)
    with pytest.raises(AttributeError):
        imgrag.no_such_function  # noqa: B018

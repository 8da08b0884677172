"""The three embedding models through the real boto3 client against their emulators:
request and response shapes, limits, purposes, multi-image calls and their alignment, and
a query using its collection's model."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from imgrag.embedders import EmbedFailed, make_embedder, model_spec
from imgrag.embedders.base import average
from imgrag.emulators.bedrock import FakeBedrock
from imgrag.errors import ConfigError
from imgrag.ledger import FailureLedger
from imgrag.pipeline import Runtime, process_batch
from imgrag.query import settings_for_collection
from imgrag.settings import Settings
from imgrag.sources import LocalSource
from imgrag.store import ImageStore
from tests.conftest import COLOURS, image_bytes

MODELS = ["amazon.titan-embed-image-v1", "amazon.nova-2-multimodal-embeddings-v1:0",
          "cohere.embed-v4:0"]


def cos(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def runtime_client(url: str) -> Any:
    return boto3.session.Session().client(
        "bedrock-runtime", endpoint_url=url, config=Config(retries={"total_max_attempts": 1}))


def invoke(client: Any, model: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.invoke_model(modelId=model, body=json.dumps(body),
                                 contentType="application/json", accept="application/json")
    return json.loads(answer["body"].read())


def validation_message(client: Any, model: str, body: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as info:
        invoke(client, model, body)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    return info.value.response["Error"]["Message"]


@pytest.mark.parametrize("model", MODELS)
def test_each_model_embeds_images_and_text_queries_into_one_space(
        bedrock: FakeBedrock, model: str) -> None:
    spec = model_spec(model)
    for dim in (min(spec.dims), spec.default_dim):
        embedder = make_embedder(Settings(model=model, dim=dim))
        images = {name: image_bytes(rgb, seed=i) for i, (name, rgb) in enumerate(COLOURS.items())}
        vectors = dict(zip(images, embedder.embed_images(list(images.values())), strict=True))
        assert {len(v) for v in vectors.values()} == {dim}
        query = embedder.embed_text("a red car")
        ranked = sorted(vectors, key=lambda name: -cos(query, vectors[name]))
        assert ranked[0] == "red" and cos(query, vectors["red"]) > 0.8
        assert embedder.text_tokens > 0  # billed tokens come from the response header
        embedder.close()
    expected_calls = 2 if spec.images_per_call > 1 else 2 * len(COLOURS)
    assert bedrock.stats.image_calls == expected_calls
    assert bedrock.stats.images == 2 * len(COLOURS)


def test_nova_indexes_for_generic_index_and_queries_for_image_retrieval(
        bedrock: FakeBedrock) -> None:
    embedder = make_embedder(Settings(model="nova", dim=1024))
    red = embedder.embed_images([image_bytes(COLOURS["red"])])[0]
    assert cos(embedder.embed_text("red"), red) > 0.8
    client = runtime_client(bedrock.url)
    wrong = invoke(client, embedder.model_id, {"taskType": "SINGLE_EMBEDDING",
                   "singleEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX",
                                             "embeddingDimension": 1024,
                                             "text": {"truncationMode": "END", "value": "red"}}})
    assert wrong["embeddings"][0]["embeddingType"] == "TEXT"
    assert cos(wrong["embeddings"][0]["embedding"], red) < 0.5  # purposes do not pair


def test_nova_long_text_is_truncated_by_the_service_not_refused(bedrock: FakeBedrock) -> None:
    embedder = make_embedder(Settings(model="nova", dim=256))
    assert len(embedder.embed_text("red " * 20_000)) == 256
    assert bedrock.stats.errors == 0


def test_cohere_sends_up_to_96_images_a_call_and_splits_by_request_size(
        bedrock: FakeBedrock) -> None:
    embedder = make_embedder(Settings(model="cohere", dim=256))
    images = [image_bytes(COLOURS["blue"], seed=i) for i in range(100)]
    assert len(embedder.embed_images(images)) == 100
    assert (bedrock.stats.image_calls, bedrock.stats.images) == (2, 100)
    big = [b"x" * (3 * 1024 * 1024)] * 20  # 4 MB of base64 each, 20 MB a request
    groups = list(embedder.calls(big))
    assert [len(g) for g in groups] == [4] * 5
    spec = embedder.spec
    assert all(sum(embedder.format.request_bytes(len(i)) for i in g) <= spec.max_request_bytes
               for g in groups)


def test_cohere_answer_with_fewer_vectors_fails_the_call(bedrock: FakeBedrock) -> None:
    def drop_last(payload: dict[str, Any]) -> dict[str, Any]:
        payload["embeddings"]["float"].pop()
        return payload

    bedrock.rewrite_answers(drop_last)
    embedder = make_embedder(Settings(model="cohere", dim=256))
    with pytest.raises(EmbedFailed, match="returned 2 vectors for 3 inputs") as info:
        embedder.embed_images([image_bytes(COLOURS[c]) for c in ("red", "green", "blue")])
    assert not info.value.permanent


def test_emulators_refuse_malformed_requests(bedrock: FakeBedrock) -> None:
    client = runtime_client(bedrock.url)
    nova, cohere = model_spec("nova").model_id, model_spec("cohere").model_id
    png = base64.b64encode(image_bytes(COLOURS["red"], fmt="PNG")).decode()
    params = {"embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 512,
              "text": {"truncationMode": "END", "value": "x"}}
    assert "embeddingDimension" in validation_message(
        client, nova, {"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": params})
    assert "Exactly one of" in validation_message(client, nova, {
        "taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX", "text": {"truncationMode": "END", "value": "x"},
            "image": {"format": "png", "source": {"bytes": png}}}})
    assert "Unsupported image format: PNG" in validation_message(client, nova, {
        "taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
            "embeddingPurpose": "GENERIC_INDEX",
            "image": {"format": "jpeg", "source": {"bytes": png}}}})
    uri = f"data:image/png;base64,{png}"
    base = {"input_type": "search_document", "embedding_types": ["float"]}
    assert "1 to 96" in validation_message(client, cohere, base | {"images": [uri] * 97})
    assert "exactly one of" in validation_message(
        client, cohere, base | {"images": [uri], "texts": ["x"]})
    assert "data URI string" in validation_message(
        client, cohere, base | {"images": [{"url": uri}]})
    assert "output_dimension" in validation_message(
        client, cohere, base | {"images": [uri], "output_dimension": 384})
    answer = invoke(client, cohere, {"input_type": "search_query", "texts": ["red", "blue"]})
    assert answer["response_type"] == "embeddings_floats" and len(answer["embeddings"]) == 2


def _runtime(tmp_path: Path, settings: Settings, files: dict[str, bytes]) -> Runtime:
    folder = tmp_path / "photos"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Runtime(settings, LocalSource(folder), ImageStore.open(settings),
                   make_embedder(settings), FailureLedger(tmp_path / "ledger", "images"),
                   ThreadPoolExecutor(4))


def test_one_image_cohere_refuses_fails_alone(bedrock: FakeBedrock, tmp_path: Path) -> None:
    settings = Settings(chroma_path=tmp_path / "db", model="cohere", dim=256)
    files = {f"{c}.jpg": image_bytes(COLOURS[c]) for c in COLOURS}
    files["tiny.png"] = image_bytes(COLOURS["red"], size=(8, 8), fmt="PNG")
    def tiny(uri: str) -> bool:
        data = base64.b64decode(uri.split(",", 1)[1])
        return Image.open(io.BytesIO(data)).size[0] < 16

    bedrock.fail_when(lambda body: "ValidationException"
                      if any(tiny(i) for i in body.get("images", [])) else None)
    rt = _runtime(tmp_path, settings, files)
    try:
        result = process_batch(rt, list(rt.source.list_objects()), "run")
    finally:
        rt.close()
    assert result.upserted == len(COLOURS) and rt.store.count() == len(COLOURS)
    assert [(f.id.rsplit("/", 1)[1], f.permanent) for f in result.failures] == [
        ("tiny.png", True)]
    assert bedrock.stats.images == len(COLOURS)  # the refused call embedded nothing


def test_a_query_uses_the_collections_model_and_refuses_another(
        bedrock: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(chroma_path=tmp_path / "db", model="nova", dim=384)
    rt = _runtime(tmp_path, settings, {"red.jpg": image_bytes(COLOURS["red"])})
    try:
        process_batch(rt, list(rt.source.list_objects()), "run")
    finally:
        rt.close()
    monkeypatch.setenv("IMGRAG_CHROMA_PATH", str(tmp_path / "db"))
    monkeypatch.setenv("IMGRAG_MODEL", "titan")  # an ingest default; not the collection's
    adopted = settings_for_collection(Settings())
    assert (adopted.model_id, adopted.dim) == (settings.model_id, 384)
    assert adopted.price_per_image == model_spec("nova").price_per_image
    assert settings_for_collection(Settings(), model="nova", dim=384).model_id == \
        settings.model_id
    with pytest.raises(ConfigError, match=r"holds amazon\.nova-2.* dim 384"):
        settings_for_collection(Settings(), model="cohere")
    with pytest.raises(ConfigError, match="drop --model/--dim"):
        settings_for_collection(Settings(), dim=1024)


def test_settings_take_short_names_and_check_the_models_dimensions() -> None:
    assert Settings(model="cohere").dim == 1536
    assert Settings(model="amazon.nova-2-multimodal-embeddings-v1:0", dim=3072).dim == 3072
    with pytest.raises(ValueError, match="Titan Multimodal Embeddings G1"):
        Settings(dim=3072)
    with pytest.raises(ConfigError, match="unsupported model 'clip'"):
        Settings(model="clip")


def test_nova_reads_s3_images_itself_when_allowed(
        bedrock: FakeBedrock, s3, bucket: str, tmp_path: Path) -> None:
    from imgrag.sources import open_source

    for colour in ("red", "blue"):
        s3.put_object(Bucket=bucket, Key=f"p/{colour}.jpg", Body=image_bytes(COLOURS[colour]))
    s3.put_object(Bucket=bucket, Key="p/notes.jpg", Body=b"not an image")
    settings = Settings(chroma_path=tmp_path / "db", model="nova", dim=256, s3_location=True)
    rt = Runtime(settings, open_source(f"s3://{bucket}/p/", settings), ImageStore.open(settings),
                 make_embedder(settings), FailureLedger(tmp_path / "ledger", "images"),
                 ThreadPoolExecutor(2))
    try:
        result = process_batch(rt, list(rt.source.list_objects()), "run")
        red = rt.store.get_embedding(f"s3://{bucket}/p/red.jpg")
        meta = rt.store.get([f"s3://{bucket}/p/red.jpg"])[f"s3://{bucket}/p/red.jpg"]
        query = rt.embedder.embed_text("red")
    finally:
        rt.close()
    assert (result.upserted, result.bytes_downloaded) == (2, 0)  # nothing downloaded here
    assert [(f.id.rsplit("/", 1)[1], f.permanent) for f in result.failures] == [
        ("notes.jpg", True)]  # the model's ValidationException, recorded
    assert cos(query, red) > 0.8 and (meta["width"], meta["format"]) == (0, "")


def test_batch_mode_needs_its_settings_and_a_model_batch_inference_takes() -> None:
    with pytest.raises(ValueError, match="IMGRAG_BATCH_ROLE_ARN"):
        Settings(mode="auto")
    batch = {"batch_role_arn": "arn:aws:iam::123456789012:role/r",
             "batch_staging_uri": "s3://b/p/"}
    assert Settings(mode="batch", model="nova", **batch).mode == "batch"
    with pytest.raises(ValueError, match="Cohere Embed v4 does not support"):
        Settings(mode="batch", model="cohere", **batch)
    assert Settings(mode="auto", model="cohere", **batch).mode == "auto"  # on-demand then


@pytest.mark.parametrize("model", MODELS)
def test_an_image_and_a_text_make_one_query_vector(bedrock: FakeBedrock, model: str) -> None:
    embedder = make_embedder(Settings(model=model, dim=model_spec(model).dims[0]))
    image = image_bytes(COLOURS["red"])
    combined = embedder.embed_image_text(image, "blue")
    one_call = model_spec(model).model_id == "amazon.titan-embed-image-v1"
    assert bedrock.stats.requests == (1 if one_call else 2)
    assert combined == pytest.approx(average(embedder.embed_images([image])[0],
                                             embedder.embed_text("blue")), abs=1e-6)
    embedder.close()

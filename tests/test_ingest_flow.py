"""End-to-end ingest and query through the real flows: moto S3, Titan emulator, Chroma."""

from __future__ import annotations

import pytest

from flows.ingest import ingest_flow
from flows.query import query_flow
from tests.conftest import COLOURS, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def put_colours(s3, bucket: str, prefix: str = "", seed: int = 0) -> dict[str, str]:
    keys = {}
    for i, (name, rgb) in enumerate(COLOURS.items()):
        key = f"{prefix}{name}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(rgb, seed=seed + i))
        keys[name] = key
    return keys


def test_first_ingest_then_rerun_calls_bedrock_zero_times(s3, bucket, bedrock, store_env):
    put_colours(s3, bucket)
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"not an image")

    first = ingest_flow(source=f"s3://{bucket}/")
    assert (first.listed, first.new, first.embedded, first.failed, first.ignored) == (4, 4, 4, 0, 1)
    assert bedrock.stats.image_calls == 4

    bedrock.reset_stats()
    second = ingest_flow(source=f"s3://{bucket}/")
    assert (second.unchanged, second.new, second.changed, second.embedded) == (4, 0, 0, 0)
    assert bedrock.stats.requests == 0

    hits = query_flow("a red thing", k=4)
    assert hits[0].id == f"s3://{bucket}/red.jpg"
    assert [h.rank for h in hits] == [1, 2, 3, 4]

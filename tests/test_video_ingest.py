"""Videos through the real ingest flow and search: moto S3, the Titan emulator, Chroma.

The clip has three scenes (red, blue, green; 3 s each): three frames are kept, at 0, 3 and
6 s."""

from __future__ import annotations

import io
from urllib.parse import quote

import chromadb
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flows.ingest_flow import ingest_flow
from imgrag.app import AppSettings, SearchService, create_app
from imgrag.gallery import render_html, render_markdown
from imgrag.query import SearchRequest, run_search
from imgrag.settings import Settings
from imgrag.thumbnails import ThumbnailLoader
from tests.conftest import COLOURS, image_bytes
from tests.test_run_artifacts import artifacts, table
from tests.videos import video_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")

RED, GREEN, BLUE, YELLOW = (COLOURS[c] for c in ("red", "green", "blue", "yellow"))
CLIP = [(RED, 3), (BLUE, 3), (GREEN, 3)]
TIMES = {"0", "3", "6"}


def frames(chroma_path, video_uri: str) -> dict[str, dict]:
    """Frame id → metadata of one video, read with a fresh client."""
    client = chromadb.PersistentClient(path=str(chroma_path))
    page = client.get_collection("images", embedding_function=None).get(
        where={"source_uri": video_uri}, include=["metadatas"])
    return dict(zip(page["ids"], page["metadatas"], strict=True))


def times(records: dict[str, dict]) -> set[str]:
    return {record_id.rsplit("#t=", 1)[1] for record_id in records}


@pytest.fixture
def clip(s3, bucket) -> str:
    """A bucket with the clip and one red image; the clip's URI."""
    s3.put_object(Bucket=bucket, Key="media/clip.mp4", Body=video_bytes(CLIP))
    s3.put_object(Bucket=bucket, Key="media/red.jpg", Body=image_bytes(RED))
    return f"s3://{bucket}/media/clip.mp4"


def test_a_video_becomes_one_record_per_kept_frame_and_a_rerun_costs_nothing(
    s3, bucket, bedrock, store_env, clip, s3_requests
):
    report = ingest_flow(source=f"s3://{bucket}/media/")

    assert (report.listed, report.new, report.failed, report.embedded) == (2, 2, 0, 4)
    assert [(v.uri, v.frames, v.billed_images, v.duration_s) for v in report.videos] == [
        (clip, 3, 3, 9.0)]
    assert bedrock.stats.image_calls == report.billed_images == 4
    [published] = artifacts("ingest-videos-images", report.run_id)
    assert table(published) == [
        {"uri": clip, "frames": 3, "billed_images": 3, "duration_s": 9.0}]
    records = frames(store_env, clip)
    assert times(records) == TIMES
    meta = records[f"{clip}#t=3"]
    head = s3.head_object(Bucket=bucket, Key="media/clip.mp4")
    assert (meta["source_uri"], meta["etag"], meta["size"]) == (
        clip, head["ETag"], head["ContentLength"])
    assert (meta["frame_t"], meta["duration_s"], meta["width"], meta["height"]) == (
        3.0, 9.0, 64, 48)
    assert (meta["media"], meta["video_frames"], meta["key"]) == ("video", 3, "media/clip.mp4")

    bedrock.reset_stats()
    s3_requests.lines.clear()
    again = ingest_flow(source=f"s3://{bucket}/media/")
    assert (again.unchanged, again.new, again.changed, again.deleted) == (2, 0, 0, 0)
    assert bedrock.stats.requests == 0
    assert s3_requests.object_gets(bucket) == 0


def test_video_off_lists_images_only(s3, bucket, bedrock, store_env, clip):
    report = ingest_flow(source=f"s3://{bucket}/media/", video=False)
    assert (report.listed, report.ignored, report.videos) == (1, 1, [])
    assert frames(store_env, clip) == {}


def test_a_changed_video_replaces_all_its_frames_and_a_deleted_one_removes_them(
    s3, bucket, bedrock, store_env, clip
):
    ingest_flow(source=f"s3://{bucket}/media/")
    s3.put_object(Bucket=bucket, Key="media/clip.mp4",
                  Body=video_bytes([(YELLOW, 2), (BLUE, 5)]))
    report = ingest_flow(source=f"s3://{bucket}/media/")
    assert (report.changed, report.unchanged) == (1, 1)
    records = frames(store_env, clip)
    assert times(records) == {"0", "2"}
    etag = s3.head_object(Bucket=bucket, Key="media/clip.mp4")["ETag"]
    assert {m["etag"] for m in records.values()} == {etag}
    assert {m["video_frames"] for m in records.values()} == {2}

    s3.delete_object(Bucket=bucket, Key="media/clip.mp4")
    report = ingest_flow(source=f"s3://{bucket}/media/")
    assert report.deleted == 1
    assert frames(store_env, clip) == {}


def test_a_video_whose_new_bytes_fail_loses_its_old_frames(s3, bucket, bedrock, store_env,
                                                           clip):
    ingest_flow(source=f"s3://{bucket}/media/")
    s3.put_object(Bucket=bucket, Key="media/clip.mp4", Body=b"now a text file" * 50)
    report = ingest_flow(source=f"s3://{bucket}/media/")
    assert [(f.id, f.stage, f.permanent) for f in report.failures] == [(clip, "decode", True)]
    assert report.stale_removed == 1
    assert frames(store_env, clip) == {}


def test_half_a_videos_frames_stored_is_not_done(s3, bucket, bedrock, store_env, clip):
    """A crash while writing a video's frames leaves part of them: the next run re-does
    the video; a failure while embedding one frame stores none of them."""
    ingest_flow(source=f"s3://{bucket}/media/")
    client = chromadb.PersistentClient(path=str(store_env))
    client.get_collection("images", embedding_function=None).delete(ids=[f"{clip}#t=6"])

    bedrock.reset_stats()
    report = ingest_flow(source=f"s3://{bucket}/media/")
    assert (report.changed, report.unchanged) == (1, 1)
    assert bedrock.stats.image_calls == 3
    assert times(frames(store_env, clip)) == TIMES

    s3.put_object(Bucket=bucket, Key="media/clip.mp4", Body=video_bytes([(BLUE, 4)]))
    bedrock.fail_next(1, "ValidationException")  # the new version's first frame
    report = ingest_flow(source=f"s3://{bucket}/media/")
    assert [(f.stage, f.permanent) for f in report.failures] == [("embed", True)]
    assert frames(store_env, clip) == {}  # not the old version's, not half the new one's

    report = ingest_flow(source=f"s3://{bucket}/media/", retry_failed=True)
    assert report.failed == 0
    assert times(frames(store_env, clip)) == {"0"}


def test_hostile_videos_fail_with_a_reason_and_the_rest_is_indexed(
    s3, bucket, bedrock, store_env, s3_requests, monkeypatch
):
    monkeypatch.setenv("IMGRAG_MAX_OBJECT_BYTES", "20000")
    s3.put_object(Bucket=bucket, Key="v/empty.mov", Body=b"")
    s3.put_object(Bucket=bucket, Key="v/huge.mkv", Body=bytes(20001))
    s3.put_object(Bucket=bucket, Key="v/notes.webm", Body=b"# minutes\n" * 100)
    good = video_bytes([(RED, 1), (BLUE, 1)])
    s3.put_object(Bucket=bucket, Key="v/cut.mp4", Body=good[: len(good) // 2])
    s3.put_object(Bucket=bucket, Key="v/good.avi", Body=video_bytes([(RED, 1)], ".avi"))
    long = video_bytes([(RED, 5), (BLUE, 5)], ".mkv")  # frames decode, then the file ends
    s3.put_object(Bucket=bucket, Key="v/partial.mkv", Body=long[: len(long) * 2 // 3])

    report = ingest_flow(source=f"s3://{bucket}/v/")

    failures = {f.id.rsplit("/", 1)[1]: (f.stage, f.reason) for f in report.failures}
    assert failures == {
        "empty.mov": ("download", "empty file"),
        "huge.mkv": ("download", "object is 20001 bytes, above the 20000 byte limit"),
        "notes.webm": ("decode", failures["notes.webm"][1]),
        "cut.mp4": ("decode", failures["cut.mp4"][1]),
        "partial.mkv": ("decode", failures["partial.mkv"][1]),
    }
    assert failures["partial.mkv"][1].startswith("truncated: frames end at")
    assert bedrock.stats.image_calls == 1  # good.avi's frame: a failing video costs none
    assert failures["notes.webm"][1].startswith("not a readable video")
    assert failures["cut.mp4"][1].startswith("not a readable video")
    assert [(v.uri.rsplit("/", 1)[1], v.frames) for v in report.videos if v.frames] == [
        ("good.avi", 1)]
    gets = [line for line in s3_requests.lines if "GET /" in line and "list-type" not in line]
    assert not any("empty.mov" in line or "huge.mkv" in line for line in gets)


def test_a_query_finds_the_video_at_the_scenes_time(s3, bucket, bedrock, store_env, clip,
                                                    tmp_path):
    ingest_flow(source=f"s3://{bucket}/media/")
    settings = Settings()

    [hit] = run_search(settings, SearchRequest(text="blue", k=1))
    assert (hit.id, hit.metadata["frame_t"]) == (f"{clip}#t=3", 3.0)

    grouped = run_search(settings, SearchRequest(text="red", k=2))
    assert {h.metadata["source_uri"] for h in grouped} == {clip, f"s3://{bucket}/media/red.jpg"}
    assert next(h for h in grouped if h.metadata.get("media") == "video").id == f"{clip}#t=0"

    every = run_search(settings, SearchRequest(text="red", k=4, group_by="none"))
    assert len(every) == 4 and all(h.times == [] for h in every)

    s3.put_object(Bucket=bucket, Key="media/twice.mkv",
                  Body=video_bytes([(BLUE, 2), (RED, 2), (BLUE, 2)], ".mkv"))
    ingest_flow(source=f"s3://{bucket}/media/")
    twice = f"s3://{bucket}/media/twice.mkv"
    hits = {h.metadata["source_uri"]: h for h in run_search(settings, SearchRequest(
        text="blue", k=2))}
    assert set(hits) == {clip, twice}  # one hit per video
    assert hits[clip].metadata["frame_t"] == 3.0
    moments = [hits[twice].metadata["frame_t"], *hits[twice].times]
    assert {0.0, 4.0} <= set(moments)  # its best blue frame, and the other one in times

    example = tmp_path / "green.png"
    example.write_bytes(image_bytes(GREEN, fmt="PNG"))
    [moment] = run_search(settings, SearchRequest(image=str(example), k=1))
    assert (moment.id, moment.metadata["frame_t"]) == (f"{clip}#t=6", 6.0)


def test_gallery_shows_the_frame_and_links_to_a_local_video_at_its_time(
    bedrock, store_env, tmp_path
):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clip.mov").write_bytes(video_bytes(CLIP, ".mov"))
    ingest_flow(source=str(folder))
    settings = Settings()
    [hit] = run_search(settings, SearchRequest(text="blue", k=1))
    clip = (folder / "clip.mov").as_uri()
    assert hit.id == f"{clip}#t=3"

    [thumb] = ThumbnailLoader(settings).load([hit])
    with Image.open(io.BytesIO(thumb.data)) as im:
        r, g, b = im.convert("RGB").getpixel((im.width // 2, im.height // 2))
    assert b > 150 and r < 80 and g < 100  # the blue scene's frame, decoded at 3 s
    page = render_html([hit], [thumb], "blue")
    assert f'<a href="{clip}#t=3">' in page
    assert "t=3 s" in render_markdown([hit], [thumb], "blue")


def test_the_search_app_answers_with_the_video_moment_and_its_frame(
    s3, bucket, bedrock, store_env, clip
):
    ingest_flow(source=f"s3://{bucket}/media/")
    service = SearchService(Settings(), AppSettings())
    try:
        app = create_app(service, ["127.0.0.1"])
        with TestClient(app, base_url="http://127.0.0.1") as client:
            [hit] = client.get("/api/search", params={"q": "blue", "k": 1}).json()["hits"]
            assert (hit["id"], hit["metadata"]["frame_t"]) == (f"{clip}#t=3", 3.0)
            frame = client.get(hit["thumbnail_url"])
            assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
            every = client.get("/api/search", params={"q": "red", "k": 4, "group_by": "none"})
            assert len(every.json()["hits"]) == 4
            grouped = client.get("/api/search", params={"q": "red", "k": 4}).json()["hits"]
            assert len(grouped) == 2  # the clip once, and the image
            record = client.get(f"/api/record/{quote(f'{clip}#t=6', safe='')}")
            assert record.json()["metadata"]["media"] == "video"
    finally:
        service.close()


def test_a_run_that_may_use_batch_jobs_embeds_its_videos_on_demand(
    s3, bucket, bedrock, store_env, clip, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", bedrock.url)
    monkeypatch.setenv("IMGRAG_BATCH_STAGING_URI", f"s3://{bucket}/staging/")
    monkeypatch.setenv("IMGRAG_BATCH_ROLE_ARN", "arn:aws:iam::123456789012:role/imgrag-batch")
    report = ingest_flow(source=f"s3://{bucket}/media/", mode="auto")
    assert (report.new, report.failed, report.batch_jobs) == (2, 0, [])
    assert times(frames(store_env, clip)) == TIMES

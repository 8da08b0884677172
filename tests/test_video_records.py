"""Frames as records without a store: the manifest entry of a video, grouped hits, output."""

from __future__ import annotations

import json

from flows.ingest import print_report
from flows.query import build_parser, build_request, print_hits
from imgrag.records import Hit, Indexed, IngestReport, VideoResult
from imgrag.video_records import group_by_video, manifest_entries

VIDEO = "s3://b/clip.mp4"


def frame(t: float, etag: str = '"v1"', frames: int = 3) -> tuple[str, dict]:
    return f"{VIDEO}#t={t:g}", {"source_uri": VIDEO, "etag": etag, "media": "video",
                                "frame_t": t, "video_frames": frames, "normalize_version": 1,
                                "size": 10, "last_modified": "2024"}


def test_a_video_is_indexed_only_with_its_complete_set_of_frames_of_one_etag():
    image = ("s3://b/a.jpg", {"etag": '"i"', "normalize_version": 1, "size": 5})
    complete = manifest_entries([image, frame(0), frame(3), frame(6)])
    assert complete == {"s3://b/a.jpg": Indexed('"i"', 1, "", 5),
                        VIDEO: Indexed('"v1"', 1, "2024", 10)}
    assert manifest_entries([frame(0), frame(3)])[VIDEO].etag == ""  # half written
    mixed = [frame(0), frame(3, '"v2"'), frame(6)]  # a replacement cut short
    assert manifest_entries(mixed)[VIDEO].etag == ""


def hit(record_id: str, distance: float, **meta: object) -> Hit:
    return Hit(rank=0, id=record_id, distance=distance, metadata=meta)


def test_grouping_keeps_a_videos_best_frame_and_the_times_ranked_above_the_first_left_out():
    hits = [
        hit(f"{VIDEO}#t=4", 0.1, source_uri=VIDEO, media="video", frame_t=4.0),
        hit("s3://b/a.jpg", 0.2, source_uri="s3://b/a.jpg"),
        hit(f"{VIDEO}#t=0", 0.3, source_uri=VIDEO, media="video", frame_t=0.0),
        hit("s3://b/b.jpg", 0.4, source_uri="s3://b/b.jpg"),  # the best hit left out (k=2)
        hit(f"{VIDEO}#t=9", 0.5, source_uri=VIDEO, media="video", frame_t=9.0),
    ]
    grouped = group_by_video(hits, 2)
    assert [(h.rank, h.id, h.times) for h in grouped] == [
        (1, f"{VIDEO}#t=4", [0.0]), (2, "s3://b/a.jpg", [])]
    assert [h.id for h in group_by_video(hits, 3)][2] == "s3://b/b.jpg"
    assert group_by_video(hits, 3)[0].times == [0.0, 9.0]


def test_reports_and_hits_show_frames_per_video_and_the_moment(capsys):
    report = IngestReport(run_id="r", source="s3://b/", collection="images", model_id="m",
                          dim=256, videos=[VideoResult(uri=VIDEO, frames=3, billed_images=3,
                                                       duration_s=9.0)])
    print_report(report, as_json=False)
    out = capsys.readouterr().out
    assert "videos      1 (3 frames, Bedrock images billed 3)" in out
    assert f"VIDEO {VIDEO}  9.0s  frames 3  billed 3" in out

    moment = hit(f"{VIDEO}#t=4", 0.1, source_uri=VIDEO, media="video", frame_t=4.0,
                 size=10).model_copy(update={"rank": 1, "times": [0.0]})
    print_hits([moment], as_json=False)
    assert capsys.readouterr().out.rstrip().endswith(f"{VIDEO}#t=4  10 B  t=4 s (also 0 s)")
    print_hits([moment], as_json=True)
    assert json.loads(capsys.readouterr().out)[0]["times"] == [0.0]


def test_group_by_is_a_query_flag():
    args = build_parser().parse_args(["red", "--group-by", "none"])
    assert build_request(args).group_by == "none"
    assert build_request(build_parser().parse_args(["red"])).group_by == "video"

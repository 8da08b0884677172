"""Smoke test of bench.video on a tiny clip: its figures are reported (not speed). The
re-run cost is asserted by tests/test_video_ingest.py through the flow itself."""

from __future__ import annotations

from bench.video import selection_speed


def test_selection_speed_reports_frames_per_second_and_keeps_a_frame_per_scene(tmp_path):
    row = selection_speed(tmp_path, "tiny", (320, 180), 4.0)  # a cut every 3 s
    assert (row["frames"], row["kept"], row["size"]) == (120, 2, "320x180")
    assert row["frames_per_s"] > 0 and row["x_realtime"] > 0


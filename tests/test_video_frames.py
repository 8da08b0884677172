"""Frame selection and decoding budgets of imgrag.video, on videos generated with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from imgrag.video import DecodeBudget, FrameSampling, VideoError, VideoReader
from imgrag.video_records import frame_id
from tests.conftest import COLOURS
from tests.videos import CODECS, video_bytes, write_video

RED, GREEN, BLUE, YELLOW = (COLOURS[c] for c in ("red", "green", "blue", "yellow"))
STEP = 0.5


def kept(path: Path, budget: DecodeBudget | None = None, **sampling: float) -> list[float]:
    with VideoReader(path, budget or DecodeBudget()) as reader:
        settings = FrameSampling(sample_step_s=STEP, **sampling)
        return [frame.t for frame in reader.frames(settings, max_side=2048)]


def test_a_frame_is_kept_within_one_sampling_step_of_each_cut(tmp_path):
    path = tmp_path / "scenes.mp4"
    cuts = write_video(path, [(RED, 3.2), (BLUE, 4.1), (GREEN, 2.3), (YELLOW, 5)])
    times = kept(path)
    assert times[0] == 0.0
    for cut in cuts:
        assert any(cut <= t <= cut + STEP for t in times), (cut, times)
    assert len(times) == len(cuts) + 1  # nothing else: no scene lasts the max interval


def test_the_max_interval_and_the_cap_bound_the_frames_of_a_still_scene(tmp_path):
    path = tmp_path / "still.mkv"
    write_video(path, [(GREEN, 25)], fps=4)
    assert kept(path, max_interval_s=10) == [0.0, 10.0, 20.0]
    # capped at 2: the interval stretches to duration / cap, so both ends are covered
    assert kept(path, max_interval_s=10, max_frames=2) == [0.0, 12.5]


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_each_container_decodes(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(video_bytes([(RED, 1), (BLUE, 1)], suffix))
    with VideoReader(path, DecodeBudget()) as reader:
        assert (reader.info.width, reader.info.height) == (64, 48)
        frames = list(reader.frames(FrameSampling(sample_step_s=STEP), 2048))
        assert [f.t for f in frames] == [0.0, 1.0]
        assert all(f.jpeg[:2] == b"\xff\xd8" for f in frames)


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "long.mkv"
    write_video(path, [(RED, 5), (BLUE, 5)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return path


def _ten_seconds(tmp_path: Path) -> Path:
    path = tmp_path / "ten.mkv"
    write_video(path, [(RED, 5), (BLUE, 5)])
    return path


def _absurd_frames(tmp_path: Path) -> Path:
    """A Motion-JPEG video whose frames claim to be 16000x16000 (the container says 16x16)."""
    path = tmp_path / "absurd.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=5)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuvj420p"
        for _ in range(5):
            pixels = np.full((16, 16, 3), 100, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xc0")  # each frame's SOF0: marker, length, precision, height, width
    while at != -1:
        data[at + 5 : at + 9] = (16000).to_bytes(2, "big") * 2
        at = data.find(b"\xff\xc0", at + 2)
    path.write_bytes(bytes(data))
    return path


def _unknown_codec(tmp_path: Path) -> Path:
    path = tmp_path / "odd.mkv"
    write_video(path, [(RED, 1)])
    data = path.read_bytes()
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    return path


def _file(name: str, data: bytes):
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return make


def _truncated_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "cut.mp4"
    write_video(path, [(RED, 2)])
    path.write_bytes(path.read_bytes()[:-200])  # moov, written last, is cut
    return path


@pytest.mark.parametrize(("make", "budget", "reason"), [
    (_file("empty.mp4", b""), {}, "not a readable video"),
    (_file("notes.mp4", b"meeting notes, not a video\n" * 40), {}, "not a readable video"),
    (_truncated_mp4, {}, "not a readable video"),
    (_truncated, {}, "truncated: frames end at"),
    (_unknown_codec, {}, "no decoder for the video's codec"),
    (_absurd_frames, {}, "cannot decode"),
    (_file("x.avi", b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(300)), {}, "not a readable video"),
    (_ten_seconds, {"max_pixels": 64 * 47},
     "frame size 64x48 is above the limit of 3008 pixels"),
    (_ten_seconds, {"max_duration_s": 3},
     "duration 10 s is above the limit of 3 s"),
    (_ten_seconds, {"timeout_s": 1e-6},
     "decoding took longer than"),
], ids=["zero-length", "text", "truncated-mp4", "truncated-mkv", "unknown-codec",
        "absurd-frame-header",
        "broken-avi", "resolution", "duration", "time-budget"])
def test_hostile_videos_fail_with_a_reason(tmp_path, make, budget, reason):
    path = make(tmp_path)
    with pytest.raises(VideoError) as caught:
        kept(path, DecodeBudget(**budget))
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_frame_ids_use_media_fragment_seconds():
    assert frame_id("s3://b/v.mp4", 12.5) == "s3://b/v.mp4#t=12.5"
    assert frame_id("s3://b/v.mp4", 0.0) == "s3://b/v.mp4#t=0"
    assert frame_id("file:///v.mov", 3.25) == "file:///v.mov#t=3.25"


def test_with_more_cuts_than_the_cap_the_kept_frames_still_span_the_video(tmp_path):
    path = tmp_path / "busy.mp4"
    write_video(path, [(c, 1) for c in (RED, BLUE, GREEN, YELLOW) * 3], fps=4)  # 12 cuts
    assert kept(path, max_frames=4) == [0.0, 3.0, 6.0, 9.0]  # not 0, 1, 2, 3

"""Video → frames: decode a file with PyAV (FFmpeg's libraries, in its wheel) and keep the
frames worth embedding.

Selection: the video is sampled every ``sample_step_s``; a sample is kept when it differs
from the previous sample by more than ``scene_threshold`` (mean absolute change of a 32×32
RGB miniature, 0..1: a cut), when ``max_interval_s`` passed since the last kept frame, and
always for the first one. At most ``max_frames`` are kept, at least ``duration /
max_frames`` apart: for a long video the interval stretches to that, and cuts closer than
that to the last kept frame are passed over, so the kept frames span all of the video.

Budget: a container declaring a frame over ``max_pixels`` or a duration over
``max_duration_s`` is refused before decoding; decoded frames are checked again (headers
can lie, and the decoder is told to refuse larger ones before allocating them); one frame is
decoded at a time (two decoder threads), and a kept frame is held only as a JPEG of at most
``max_side`` (at most ``max_frames`` of them). Reading and decoding stop at ``timeout_s``.
Every refusal is a :class:`VideoError` with a one-line reason.

PyAV is imported when a video is opened: listing, planning and CLI start-up never load it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from imgrag.settings import Settings

SIGNATURE_SIDE = 32  # px: the miniature two samples are compared by
DECODER_THREADS = 2
FRAME_JPEG_QUALITY = 90
_TRUNCATION_SLACK_S = 1.0  # decoded end this far (plus a sampling step) short of the
# declared duration means the file was cut


class VideoError(Exception):
    """A video cannot be indexed; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameSampling(BaseModel):
    """Which frames of a video are kept."""

    model_config = ConfigDict(frozen=True)

    sample_step_s: float = Field(0.5, gt=0)
    max_interval_s: float = Field(10.0, gt=0)
    max_frames: int = Field(120, ge=1)
    scene_threshold: float = Field(0.12, gt=0, le=1)


class DecodeBudget(BaseModel):
    """What decoding one video may cost."""

    model_config = ConfigDict(frozen=True)

    max_pixels: int = Field(8192 * 4320, ge=1)
    max_duration_s: float = Field(4 * 3600, gt=0)
    timeout_s: float = Field(300.0, gt=0)


def sampling_of(settings: Settings) -> FrameSampling:
    """The frame selection the settings ask for."""
    return FrameSampling(sample_step_s=settings.video_sample_step_s,
                         max_interval_s=settings.video_max_interval_s,
                         max_frames=settings.video_max_frames,
                         scene_threshold=settings.video_scene_threshold)


def budget_of(settings: Settings) -> DecodeBudget:
    """The decoding budget the settings allow per video."""
    return DecodeBudget(max_pixels=settings.video_max_pixels,
                        max_duration_s=settings.video_max_duration_s,
                        timeout_s=settings.video_decode_timeout_s)


class VideoInfo(BaseModel):
    """What the container declares about its first video stream."""

    duration_s: float  # 0.0 when the container does not say
    width: int
    height: int
    codec: str


class KeptFrame(NamedTuple):
    """One kept frame: its time in seconds, its decoded size and a JPEG of it."""

    t: float
    width: int
    height: int
    jpeg: bytes


def _av() -> Any:
    import av  # FFmpeg's libraries: loaded only when a video is opened

    return av


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most ``side``; never upscaled; even."""
    scale = min(1.0, side / max(width, height))
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


def _signature(frame: Any) -> Any:
    import numpy as np

    small = frame.reformat(width=SIGNATURE_SIDE, height=SIGNATURE_SIDE, format="rgb24")
    return small.to_ndarray().astype(np.int16)


def _jpeg(frame: Any, max_side: int) -> bytes:
    width, height = _fit(frame.width, frame.height, max_side)
    image = frame.reformat(width=width, height=height, format="rgb24").to_image()
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=FRAME_JPEG_QUALITY)
    return buffer.getvalue()


class VideoReader:
    """An open video file: ``info`` (checked against the budget), then ``frames()``."""

    def __init__(self, path: str | Path, budget: DecodeBudget) -> None:
        av = _av()
        self.budget = budget
        self._deadline = time.monotonic() + budget.timeout_s
        try:
            self._container = av.open(str(path), timeout=budget.timeout_s)
        except av.FFmpegError as exc:
            raise self._error("not a readable video", exc) from None
        try:
            self.info = self._probe()
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _probe(self) -> VideoInfo:
        container = self._container
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.codec is None or not codec.codec.is_decoder:
            name = getattr(codec, "name", None) or "unknown"
            raise VideoError(f"no decoder for the video's codec ({name})")
        width, height = codec.width, codec.height
        if width * height > self.budget.max_pixels:
            raise VideoError(f"frame size {width}x{height} is above the limit of "
                             f"{self.budget.max_pixels} pixels")
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        if not math.isfinite(duration) or duration < 0:
            raise VideoError(f"declared duration {duration} is not a time")
        if duration > self.budget.max_duration_s:
            raise VideoError(f"duration {duration:.0f} s is above the limit of "
                             f"{self.budget.max_duration_s:.0f} s")
        return VideoInfo(duration_s=duration, width=width, height=height, codec=codec.name)

    def frames(self, sampling: FrameSampling, max_side: int) -> Iterator[KeptFrame]:
        """The kept frames in time order (see the module's docstring)."""
        av = _av()
        stream = self._decoding_stream()
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        duration = self.info.duration_s
        spread = duration / sampling.max_frames  # kept frames this far apart fit the cap
        interval = max(sampling.max_interval_s, spread)
        next_sample, last_kept, kept, last_t = 0.0, -math.inf, 0, -1.0
        previous = None
        try:
            for frame in self._container.decode(stream):
                self._check(frame)
                if frame.time is None:
                    continue
                t = max(0.0, frame.time - start)
                last_t = t
                if t < next_sample:
                    continue
                next_sample = (math.floor(t / sampling.sample_step_s) + 1) * sampling.sample_step_s
                signature = _signature(frame)
                change = 0.0 if previous is None else float(
                    abs(signature - previous).mean()) / 255
                previous = signature
                since = t - last_kept
                cut = change > sampling.scene_threshold and since >= spread
                if kept == 0 or cut or since >= interval:
                    yield KeptFrame(round(t, 3), frame.width, frame.height,
                                    _jpeg(frame, max_side))
                    kept, last_kept = kept + 1, t
                    if kept >= sampling.max_frames:
                        return
        except av.FFmpegError as exc:
            raise self._error("cannot decode", exc) from None
        if kept == 0:
            raise VideoError("no frame could be decoded")
        if duration and last_t + sampling.sample_step_s + _TRUNCATION_SLACK_S < duration:
            raise VideoError(f"truncated: frames end at {last_t:.1f} s of a declared "
                             f"{duration:.1f} s")

    def _decoding_stream(self) -> Any:
        """The video stream, its decoder bounded: two threads, and FFmpeg itself refusing
        to allocate a frame over ``max_pixels`` (a size change inside the stream too)."""
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = DECODER_THREADS
        stream.codec_context.options = {"max_pixels": str(self.budget.max_pixels)}
        return stream

    def _over_time(self) -> VideoError:
        return VideoError(f"decoding took longer than {self.budget.timeout_s:g} s "
                          "(IMGRAG_VIDEO_DECODE_TIMEOUT_S)")

    def _error(self, what: str, exc: BaseException) -> VideoError:
        """An FFmpeg error as a VideoError; the time budget when it interrupted FFmpeg."""
        if time.monotonic() > self._deadline:
            return self._over_time()
        return VideoError(f"{what}: {_describe(exc)}")

    def _check(self, frame: Any) -> None:
        if time.monotonic() > self._deadline:
            raise self._over_time()
        if frame.width * frame.height > self.budget.max_pixels:
            raise VideoError(f"frame size {frame.width}x{frame.height} is above the limit "
                             f"of {self.budget.max_pixels} pixels")
        if frame.time is not None and frame.time > self.budget.max_duration_s:
            raise VideoError(f"frames run past the limit of "
                             f"{self.budget.max_duration_s:.0f} s")

    def frame_at(self, t: float, max_side: int) -> bytes:
        """A JPEG of the frame shown at ``t`` seconds (the first frame at or after it)."""
        av = _av()
        stream = self._decoding_stream()
        try:
            if t > 0 and stream.time_base is not None:
                self._container.seek(int(t / stream.time_base), stream=stream, backward=True)
            for frame in self._container.decode(stream):
                self._check(frame)
                if frame.time is None or frame.time + 1e-3 >= t:
                    return _jpeg(frame, max_side)
        except av.FFmpegError as exc:
            raise self._error("cannot decode", exc) from None
        raise VideoError(f"no frame at {t} s")


def _describe(exc: BaseException) -> str:
    """An FFmpeg error as one short line (its message without the file name)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:200]


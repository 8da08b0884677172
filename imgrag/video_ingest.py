"""One video through the pipeline: stream it to a temporary file → keep frames
(``imgrag.video``) → normalize and embed each as an image → replace all of its records.

The video is decoded to its end before any frame is embedded (a truncated or undecodable
video costs no Bedrock call; its kept frames wait as JPEGs, at most ``video_max_frames``),
then the frames are embedded by a small thread pool of its own. ``process_batch`` writes a
video's records only once every kept frame has its vector, in one ``replace_source``: a
video is stored whole or not at all (see ``imgrag.video_records`` for how a crash
mid-write is detected). The temporary file is removed on every path.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from imgrag.embedders import EmbedFailed
from imgrag.errors import StoreError
from imgrag.normalize import NormalizeError
from imgrag.pipeline import Runtime, normalize_for_model, record_metadata
from imgrag.records import Failure, SourceObject, Stage, VideoResult
from imgrag.sources import FetchError
from imgrag.video import KeptFrame, VideoError, VideoReader, budget_of, sampling_of
from imgrag.video_records import MEDIA_VIDEO, frame_id

EMBED_WORKERS = 8  # Bedrock calls in flight per video (the run's rate limiter paces them)
VIDEO_WORKERS = 2  # videos decoded at once per batch


@dataclass
class VideoOutcome:
    """A video's records ready to store, or its failure; and what it cost."""

    result: VideoResult
    ids: list[str] = field(default_factory=list)
    vectors: list[list[float]] = field(default_factory=list)
    metadatas: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None
    bytes_downloaded: int = 0
    store_error: StoreError | None = None  # not embedded: the store's writes gave up


class _Failed(Exception):
    def __init__(self, stage: Stage, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.stage, self.reason, self.permanent = stage, reason, permanent


def process_video(rt: Runtime, obj: SourceObject, run_id: str) -> VideoOutcome:
    """Fetch, decode, embed one video; never raises for a problem of the video itself (a
    store that gave up is in ``store_error``)."""
    outcome = VideoOutcome(VideoResult(uri=obj.uri))
    settings = rt.settings
    try:
        if obj.size == 0:
            raise _Failed("download", "empty file", True)
        if obj.size > settings.max_object_bytes:
            raise _Failed("download", f"object is {obj.size} bytes, above the "
                          f"{settings.max_object_bytes} byte limit", True)
        suffix = PurePosixPath(obj.key).suffix
        with tempfile.NamedTemporaryFile(prefix="imgrag-video-", suffix=suffix) as tmp:
            try:
                outcome.bytes_downloaded = rt.source.fetch_to(obj, tmp,
                                                              settings.max_object_bytes)
                tmp.flush()
            except FetchError as exc:
                raise _Failed("download", exc.reason, exc.permanent) from None
            _embed_frames(rt, obj, tmp.name, run_id, outcome)
    except _Failed as exc:
        outcome.failure = Failure(id=obj.uri, etag=obj.etag, stage=exc.stage,
                                  reason=exc.reason, permanent=exc.permanent)
        outcome.ids, outcome.vectors, outcome.metadatas = [], [], []  # whole or nothing
    except StoreError as exc:
        outcome.store_error = exc
        outcome.ids, outcome.vectors, outcome.metadatas = [], [], []
    outcome.result.frames = len(outcome.ids)
    return outcome


def _embed_frames(rt: Runtime, obj: SourceObject, path: str, run_id: str,
                  outcome: VideoOutcome) -> None:
    """Decode ``path`` to its end, then embed its kept frames concurrently into
    ``outcome``: a video that cannot be decoded whole costs no Bedrock call."""
    settings, embedder = rt.settings, rt.embedder
    max_side = min(settings.max_side, embedder.max_image_side)
    try:
        with VideoReader(path, budget_of(settings)) as reader:
            info = reader.info
            frames = list(reader.frames(sampling_of(settings), max_side))
    except VideoError as exc:
        raise _Failed("decode", exc.reason, True) from None
    outcome.result.duration_s = round(info.duration_s, 3)
    with ThreadPoolExecutor(min(EMBED_WORKERS, len(frames)),
                            thread_name_prefix="imgrag-frame") as pool:
        jobs = [pool.submit(_embed_one, rt, frame) for frame in frames]
    outcome.result.billed_images = sum(1 for job in jobs if job.exception() is None)
    for frame, job in zip(frames, jobs, strict=True):
        try:
            image, vector = job.result()
        except NormalizeError as exc:
            raise _Failed("normalize", f"frame at {frame.t} s: {exc.reason}", True) from None
        except EmbedFailed as exc:
            raise _Failed("embed", f"frame at {frame.t} s: {exc.reason}",
                          exc.permanent) from None
        outcome.ids.append(frame_id(obj.uri, frame.t))
        outcome.vectors.append(vector)
        outcome.metadatas.append({
            **record_metadata(obj, image, embedder, run_id),
            "width": frame.width, "height": frame.height, "format": info.codec,
            "media": MEDIA_VIDEO, "frame_t": frame.t, "duration_s": info.duration_s,
            "video_frames": len(frames),
        })


def _embed_one(rt: Runtime, frame: KeptFrame) -> tuple[Any, list[float]]:
    image = normalize_for_model(frame.jpeg, rt.embedder, rt.settings)
    rt.store.wait_writable()  # pay for no vectors while the store cannot take them
    [vector] = rt.embedder.embed_images([image.data])
    return image.model_copy(update={"data": b""}), vector


def process_videos(rt: Runtime, objects: list[SourceObject], run_id: str) -> list[VideoOutcome]:
    """``process_video`` for each video, ``VIDEO_WORKERS`` at a time (decoding is CPU-bound
    and holds a decoder's buffers: a bounded number run at once)."""
    with ThreadPoolExecutor(VIDEO_WORKERS, thread_name_prefix="imgrag-video") as pool:
        return list(pool.map(lambda obj: process_video(rt, obj, run_id), objects))

"""Video frames as records: ids, the manifest entry of a whole video, hits grouped by video.

A kept frame is one record, id ``<video uri>#t=<seconds>`` (Media Fragments). Its metadata
is an image record's (``source_uri``, ``etag``, ``size``… of the *video*; ``width`` and
``height`` of the frame) plus ``media = "video"``, ``frame_t``, ``duration_s`` and
``video_frames``: how many frames the video's complete set holds. Change detection sees a
video as one source object: its manifest entry carries the video's ETag only when exactly
that many frames of one ETag are stored, so a half-written video is re-done, never "done".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from imgrag.records import Hit, Indexed

MEDIA_VIDEO = "video"


def frame_id(video_uri: str, t: float) -> str:
    """The record id of a video's frame: ``<video uri>#t=<seconds>``."""
    seconds = f"{t:.3f}".rstrip("0").rstrip(".")
    return f"{video_uri}#t={seconds}"


def is_frame(metadata: dict[str, Any]) -> bool:
    """True for the record of a video frame."""
    return metadata.get("media") == MEDIA_VIDEO


def _indexed(meta: dict[str, Any], etag: str) -> Indexed:
    return Indexed(etag, int(meta.get("normalize_version", 0)),
                   str(meta.get("last_modified", "")), int(meta.get("size", -1)),
                   int(meta.get("ocr_version", 0)))


def manifest_entries(records: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Indexed]:
    """Source URI → Indexed for stored records: an image's own, one per video.

    A video whose stored frames are incomplete or mixed (a crash while writing, a changed
    video half replaced) gets an empty ETag: the planner sees it as changed."""
    entries: dict[str, Indexed] = {}
    videos: dict[str, list[dict[str, Any]]] = {}
    for record_id, meta in records:
        if is_frame(meta):
            videos.setdefault(str(meta.get("source_uri", "")), []).append(meta)
        else:
            entries[record_id] = _indexed(meta, str(meta.get("etag", "")))
    for uri, frames in videos.items():
        first = frames[0]
        complete = all(m.get("etag") == first.get("etag")
                       and m.get("video_frames") == len(frames) for m in frames)
        indexed = _indexed(first, str(first.get("etag", "")) if complete else "")
        entries[uri] = indexed._replace(
            normalize_version=min(int(m.get("normalize_version", 0)) for m in frames))
    return entries


def frame_label(hit: Hit) -> str:
    """``t=12.5 s`` for a frame hit (with its other matching times), else ""."""
    if not is_frame(hit.metadata):
        return ""
    label = f"t={hit.metadata.get('frame_t', 0):g} s"
    if hit.times:
        label += " (also " + ", ".join(f"{t:g}" for t in hit.times) + " s)"
    return label


def group_key(hit: Hit) -> str:
    """What a hit is grouped by: its video's URI for a frame, its own id otherwise."""
    return str(hit.metadata.get("source_uri", hit.id)) if is_frame(hit.metadata) else hit.id


def group_by_video(hits: Sequence[Hit], k: int) -> list[Hit]:
    """One hit per video (its best frame), images as they are: the first ``k`` groups,
    ranked anew. A video's hit lists in ``times`` its other frames that rank above the
    best hit left out (all of ``hits`` when none is left out)."""
    best: dict[str, Hit] = {}
    for hit in hits:
        key = group_key(hit)
        if key in best:
            group = best[key]
            best[key] = group.model_copy(
                update={"times": [*group.times, float(hit.metadata.get("frame_t", 0))]})
        elif len(best) < k:
            best[key] = hit
        else:
            break  # the best hit left out: what ranks below it does not match as well
    return [hit.model_copy(update={"rank": rank})
            for rank, hit in enumerate(best.values(), start=1)]

"""Tiny videos made with PyAV for the tests: scenes of one colour each, cuts at known times."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

Scene = tuple[tuple[int, int, int], float]  # (RGB colour, seconds)
CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264",
          ".webm": "libvpx", ".avi": "mpeg4"}


def write_video(path: Path, scenes: Sequence[Scene], *, fps: int = 10,
                size: tuple[int, int] = (64, 48)) -> list[float]:
    """Write ``scenes`` back to back (each frame marked so frames differ a little); the
    cut times, in seconds."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix.lower()], rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        index, cuts = 0, []
        for colour, seconds in scenes:
            cuts.append(index / fps)
            for _ in range(round(seconds * fps)):
                pixels = np.empty((size[1], size[0], 3), np.uint8)
                pixels[:] = colour
                pixels[0, : index % size[0]] = 255 - np.array(colour, np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode())
    return cuts[1:]


def video_bytes(scenes: Sequence[Scene], suffix: str = ".mp4", **kwargs: object) -> bytes:
    """The bytes of ``write_video``'s file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "clip" + suffix)
        write_video(path, scenes, **kwargs)  # type: ignore[arg-type]
        return path.read_bytes()

"""Benchmark of video indexing: decode + frame selection speed, Bedrock calls per minute of
video, and the cost of a re-run over unchanged videos.

Run: ``python -m bench.video [--seconds S] [--videos N] [--out file.json]``.

1. **Decode + selection**: synthetic H.264 clips (1080p and 4K, 30 fps, a cut every 3 s,
   a moving bar and noise so frames differ) through ``VideoReader.frames`` at the default
   settings; frames of video processed per wall-clock second, and the speed against real
   time.
2. **Bedrock calls per minute of video** at the defaults (max interval 10 s, cap 120):
   kept frames of one-minute clips with no cut, a cut every 20 s and a cut every 5 s, and of
   a 30-minute still clip (the cap stretches the interval).
3. **Re-run over N unchanged videos** (default 50) in a moto S3 bucket, through the
   pipeline (planner + batches, no Prefect): the first run embeds them; the second makes 0
   Bedrock calls and 0 GetObject requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np

from imgrag.settings import Settings
from imgrag.video import VideoReader, budget_of, sampling_of

FPS = 30
CUT_EVERY_S = 3.0
_ENDPOINTS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (140, 60, 160)]


def write_clip(path: Path, size: tuple[int, int], seconds: float, fps: int = FPS,
               cut_every: float | None = CUT_EVERY_S, noise: bool = True) -> None:
    """A clip of flat colour scenes (a cut every ``cut_every`` s), a moving bar, noise."""
    width, height = size
    rng = np.random.default_rng(0)
    grain = rng.integers(0, 24, (height, width, 1), dtype=np.uint8) if noise else 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            t = index / fps
            scene = int(t // cut_every) if cut_every else 0
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[:] = COLOURS[scene % len(COLOURS)]
            pixels += grain
            bar = (index * width // (2 * fps)) % width
            pixels[:, bar : bar + width // 40] = 250
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def selection_speed(workdir: Path, name: str, size: tuple[int, int],
                    seconds: float) -> dict[str, Any]:
    """Decode + select one synthetic clip at the default settings."""
    path = workdir / f"{name}.mp4"
    write_clip(path, size, seconds)
    settings = Settings()
    started = time.perf_counter()
    with VideoReader(path, budget_of(settings)) as reader:
        kept = list(reader.frames(sampling_of(settings), settings.max_side))
    elapsed = time.perf_counter() - started
    frames = round(seconds * FPS)
    return {"clip": name, "size": f"{size[0]}x{size[1]}", "seconds": seconds,
            "frames": frames, "kept": len(kept), "wall_s": round(elapsed, 2),
            "frames_per_s": round(frames / elapsed, 1),
            "x_realtime": round(seconds / elapsed, 2)}


def calls_per_minute(workdir: Path) -> list[dict[str, Any]]:
    """Kept frames (= Bedrock image calls) per minute of video at the defaults."""
    settings = Settings()
    cases = [("1 min, no cut", 60, None), ("1 min, cut every 20 s", 60, 20.0),
             ("1 min, cut every 5 s", 60, 5.0), ("30 min, no cut", 1800, None)]
    rows = []
    for label, seconds, cut in cases:
        path = workdir / "calls.mp4"
        write_clip(path, (64, 36), seconds, fps=2, cut_every=cut, noise=False)
        with VideoReader(path, budget_of(settings)) as reader:
            kept = sum(1 for _ in reader.frames(sampling_of(settings), settings.max_side))
        rows.append({"clip": label, "calls": kept,
                     "calls_per_min": round(kept / (seconds / 60), 2)})
    return rows


class _GetCounter(logging.Handler):
    """GetObject requests the moto server answered (its access log)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.gets += '"GET /' in line and "list-type" not in line


def _ingest(source: str, settings: Settings) -> tuple[int, float]:
    """One incremental run through the pipeline; (objects planned, seconds)."""
    from flows.ingest_flow import batched
    from imgrag.pipeline import Runtime, process_batch
    from imgrag.sync import ScopePlanner

    started = time.perf_counter()
    rt = Runtime.open(settings, source)
    try:
        planner = ScopePlanner(rt.source.scope, rt.store.manifest(rt.source.bucket,
                                                                  rt.source.scope))
        todo = 0
        for batch in batched(planner.todo(rt.source.list_objects()), settings.batch_size):
            todo += len(batch)
            process_batch(rt, batch, "bench")
    finally:
        rt.close()
    return todo, time.perf_counter() - started


def rerun_cost(workdir: Path, videos: int) -> dict[str, Any]:
    """First run and re-run over ``videos`` unchanged tiny videos in a moto bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    from imgrag.emulators.bedrock import FakeBedrock

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    counter = _GetCounter()
    access_log = logging.getLogger("werkzeug")
    saved_log = access_log.level, access_log.propagate
    saved_env = {v: os.environ.get(v) for v in _ENDPOINTS}
    access_log.addHandler(counter)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    try:
        host, port = server.get_host_and_port()
        os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench-video")
        for i in range(videos):
            path = workdir / "v.mp4"
            write_clip(path, (64, 36), 2.0, fps=5, cut_every=1.0 + i % 3 * 0.5, noise=False)
            s3.put_object(Bucket="bench-video", Key=f"clips/{i:03}.mp4", Body=path.read_bytes())
        with FakeBedrock() as bedrock:
            os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.url
            settings = Settings(chroma_path=workdir / "chroma")
            first, first_s = _ingest("s3://bench-video/clips/", settings)
            first_calls, first_gets = bedrock.stats.image_calls, counter.gets
            bedrock.reset_stats()
            counter.gets = 0
            again, again_s = _ingest("s3://bench-video/clips/", settings)
            return {"videos": videos, "first_run": {"processed": first, "calls": first_calls,
                                                    "gets": first_gets, "s": round(first_s, 2)},
                    "rerun": {"processed": again, "calls": bedrock.stats.requests,
                              "gets": counter.gets, "s": round(again_s, 2)}}
    finally:
        access_log.removeHandler(counter)
        access_log.level, access_log.propagate = saved_log
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="length of the 1080p clip (the 4K one is half; default 6)")
    parser.add_argument("--videos", type=int, default=50, help="videos in the re-run bucket")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    for var, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "ANONYMIZED_TELEMETRY": "False"}.items():
        os.environ[var] = value
    for var in [v for v in os.environ if v.startswith("IMGRAG_")] + ["AWS_PROFILE"]:
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="imgrag-bench-video-") as tmp:
        workdir = Path(tmp)
        speed = [selection_speed(workdir, "1080p", (1920, 1080), args.seconds),
                 selection_speed(workdir, "4k", (3840, 2160), args.seconds / 2)]
        for row in speed:
            print(f"decode+select {row['clip']:>5} {row['size']:>9}: {row['frames']} frames "
                  f"in {row['wall_s']} s = {row['frames_per_s']} frames/s "
                  f"({row['x_realtime']}x real time), {row['kept']} kept")
        calls = calls_per_minute(workdir)
        for row in calls:
            print(f"Bedrock calls {row['clip']:<22}: {row['calls']:>3} "
                  f"({row['calls_per_min']} per minute)")
        rerun = rerun_cost(workdir, args.videos)
        print(f"{args.videos} videos, first run: {rerun['first_run']}")
        print(f"{args.videos} videos, re-run unchanged: {rerun['rerun']}")
    result = {"python": platform.python_version(), "pyav": av.__version__,
              "cpus": os.cpu_count(), "speed": speed, "calls": calls, "rerun": rerun}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if rerun["rerun"]["calls"] == 0 and rerun["rerun"]["gets"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

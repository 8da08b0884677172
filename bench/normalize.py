"""Benchmark of imgrag.normalize.normalize_image against the plain Pillow path.

Run: ``python -m bench.normalize [--repeat N] [--out file.json] [--small]``.

Inputs are synthetic, photo-like images (smooth gradients, flat shapes and sensor-like noise,
so JPEG sizes are realistic: ~3.5 MB for 12 megapixels at quality 92). For every input both
paths produce a JPEG of the same size and quality:

- normalize: ``normalize_image(data, max_side=..., jpeg_quality=...)``;
- plain: ``Image.open → convert("RGB") → resize(to normalize's output size, BICUBIC) →
  save JPEG``, i.e. what one writes without thinking about draft mode.

The table gives milliseconds per image for each path (median over ``--repeat`` runs per
image, averaged over the images of a case), the speedup, and the mean absolute pixel
difference (0–255) between the two outputs. The run fails if the outputs differ in size or
that difference reaches ``MAX_MEAN_ABS_DIFF``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw

from imgrag.normalize import NORMALIZE_VERSION, normalize_image

MAX_MEAN_ABS_DIFF = 3.0
TARGET_SPEEDUP = 3.0  # on 12-megapixel JPEGs
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Case:
    """One kind of input: ``count`` images of ``size`` encoded as ``fmt``."""

    name: str
    fmt: str
    size: tuple[int, int]
    count: int
    params: dict[str, Any]


FULL_CASES = (
    Case("jpeg 12MP", "JPEG", (4000, 3000), 3, {"quality": 92}),
    Case("jpeg 12MP iphone", "JPEG", (4032, 3024), 1, {"quality": 92}),
    Case("jpeg 24MP", "JPEG", (6000, 4000), 1, {"quality": 92}),
    Case("png 12MP", "PNG", (4000, 3000), 2, {}),
)
SMALL_CASES = (
    Case("jpeg small", "JPEG", (1600, 1200), 2, {"quality": 92}),
    Case("png small", "PNG", (1600, 1200), 1, {}),
)
SMALL_MAX_SIDE = 800  # keeps the small run on the same code paths (DCT draft, resampling)


def synthetic_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB image: low-frequency colour waves, flat shapes, grain."""
    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    channels = []
    for _ in range(3):
        wave = np.full((height, width), 128, dtype=np.float32)
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.28)
            amp = rng.uniform(15, 35)
            wave += amp * np.sin(2 * np.pi * fx * x + phase) * np.cos(2 * np.pi * fy * y + phase)
        channels.append(np.clip(wave, 0, 255).astype(np.uint8))
    im = Image.fromarray(np.stack(channels, axis=-1))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(max(1, width // 80), max(2, width // 8)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.rectangle((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    pixels = np.asarray(im, dtype=np.float32)
    pixels += 6 * rng.standard_normal((height, width, 1), dtype=np.float32)  # luma grain
    pixels += 3 * rng.standard_normal((height, width, 3), dtype=np.float32)  # chroma grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def plain_pillow(data: bytes, size: tuple[int, int], quality: int) -> bytes:
    """The straightforward path: full decode, convert, resample, encode."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if im.size != size:
        im = im.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def mean_abs_diff(a: bytes, b: bytes) -> float:
    """Mean absolute difference per channel (0–255), after bringing ``b`` to ``a``'s size."""
    im_a = Image.open(io.BytesIO(a)).convert("RGB")
    im_b = Image.open(io.BytesIO(b)).convert("RGB")
    if im_b.size != im_a.size:
        im_b = im_b.resize(im_a.size, Image.Resampling.BICUBIC)
    diff = np.asarray(im_a, dtype=np.int16) - np.asarray(im_b, dtype=np.int16)
    return float(np.abs(diff).mean())


def _time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run_case(case: Case, *, repeat: int, max_side: int, seed: int = 0) -> dict[str, Any]:
    """Time both paths on ``case.count`` generated images; return the case's figures."""
    normalize_ms, plain_ms, diffs, input_bytes = [], [], [], []
    out_size: tuple[int, int] | None = None
    same_size = True
    for index in range(case.count):
        buf = io.BytesIO()
        synthetic_photo(case.size, seed + index).save(buf, format=case.fmt, **case.params)
        data = buf.getvalue()
        input_bytes.append(len(data))

        result = normalize_image(data, max_side=max_side, jpeg_quality=JPEG_QUALITY)  # warm-up
        size = (result.width, result.height)
        plain = plain_pillow(data, size, JPEG_QUALITY)
        out_size = size
        same_size &= Image.open(io.BytesIO(plain)).size == size
        diffs.append(mean_abs_diff(result.data, plain))

        runs_n, runs_p = [], []
        for _ in range(repeat):  # interleaved, so drift hits both paths alike
            runs_n.append(_time_ms(
                lambda d=data: normalize_image(d, max_side=max_side, jpeg_quality=JPEG_QUALITY)
            ))
            runs_p.append(_time_ms(lambda d=data, s=size: plain_pillow(d, s, JPEG_QUALITY)))
        normalize_ms.append(statistics.median(runs_n))
        plain_ms.append(statistics.median(runs_p))

    assert out_size is not None
    n_ms, p_ms = statistics.fmean(normalize_ms), statistics.fmean(plain_ms)
    return {
        "case": case.name,
        "format": case.fmt,
        "images": case.count,
        "input_size": list(case.size),
        "input_mb": round(statistics.fmean(input_bytes) / 1e6, 2),
        "output_size": list(out_size),
        "normalize_ms": round(n_ms, 1),
        "plain_ms": round(p_ms, 1),
        "speedup": round(p_ms / n_ms, 2),
        "mean_abs_diff": round(max(diffs), 3),
        "same_size": same_size,
    }


def print_table(cases: Sequence[dict[str, Any]], out: Any = None) -> None:
    """Print one row per case to ``out`` (standard output by default)."""
    out = out if out is not None else sys.stdout
    header = (f"{'case':<18} {'n':>2} {'input':>11} {'MB':>6} {'output':>11} "
              f"{'normalize ms':>12} {'plain ms':>9} {'speedup':>8} {'|diff|':>7}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for c in cases:
        print(
            f"{c['case']:<18} {c['images']:>2} {'x'.join(map(str, c['input_size'])):>11} "
            f"{c['input_mb']:>6.2f} {'x'.join(map(str, c['output_size'])):>11} "
            f"{c['normalize_ms']:>12.1f} {c['plain_ms']:>9.1f} {c['speedup']:>7.2f}x "
            f"{c['mean_abs_diff']:>7.3f}",
            file=out,
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, optionally write JSON; return the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.normalize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per image (3)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--small", action="store_true",
                        help=f"2+1 images of 1600x1200 and max_side {SMALL_MAX_SIDE} (a smoke run)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    cases = SMALL_CASES if args.small else FULL_CASES
    max_side = SMALL_MAX_SIDE if args.small else 2048
    results = [run_case(case, repeat=args.repeat, max_side=max_side) for case in cases]
    jpeg_12mp = [c["speedup"] for c in results if c["case"] == "jpeg 12MP"]
    figures: dict[str, Any] = {
        "benchmark": "normalize",
        "normalize_version": NORMALIZE_VERSION,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "repeat": args.repeat,
        "small": args.small,
        "max_side": max_side,
        "jpeg_quality": JPEG_QUALITY,
        "cases": results,
        "target_speedup_12mp_jpeg": TARGET_SPEEDUP,
        "target_met": bool(jpeg_12mp) and min(jpeg_12mp) >= TARGET_SPEEDUP,
    }

    print(f"normalize_image vs plain Pillow — Pillow {PIL.__version__}, max_side {max_side}, "
          f"JPEG quality {JPEG_QUALITY}, median of {args.repeat} per image")
    print_table(results)
    if jpeg_12mp:
        verdict = "met" if figures["target_met"] else "NOT met"
        print(f"target ≥{TARGET_SPEEDUP:g}x on 12 MP JPEGs: {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")

    for c in results:  # a real check, not `assert`, so that python -O keeps it
        if not c["same_size"]:
            raise AssertionError(f"{c['case']}: outputs differ in size")
        if c["mean_abs_diff"] >= MAX_MEAN_ABS_DIFF:
            raise AssertionError(
                f"{c['case']}: mean abs diff {c['mean_abs_diff']} ≥ {MAX_MEAN_ABS_DIFF}"
            )
    return figures


if __name__ == "__main__":
    main()

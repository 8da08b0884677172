"""Tests of imgrag.normalize: every fixture is generated here with Pillow (no binaries)."""

from __future__ import annotations

import io
import pickle
import random
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import pydantic
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from imgrag.normalize import (
    DRAFT_MIN_FRACTION,
    NORMALIZE_VERSION,
    NormalizedImage,
    NormalizeError,
    normalize_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
FIVE_MB = 5 * 1024 * 1024


# ---------------------------------------------------------------- fixtures and helpers


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def decode(result: NormalizedImage) -> Image.Image:
    """Open the output and check the invariants every output must hold."""
    assert result.data[:3] == b"\xff\xd8\xff"
    im = Image.open(io.BytesIO(result.data))
    assert im.format == "JPEG"
    assert im.mode == "RGB"
    assert im.size == (result.width, result.height)
    assert max(im.size) <= 2048
    assert len(result.data) <= FIVE_MB
    assert "exif" not in im.info and "icc_profile" not in im.info
    assert not im.info.get("progressive") and not im.info.get("progression")
    im.load()
    return im


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A cheap photo-like RGB image: a gradient with a few coloured shapes."""
    width, height = size
    rng = random.Random(seed)
    grad = Image.linear_gradient("L").resize(size)
    im = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grad))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(10, max(11, width // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in "rgb"))
    return im


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of all-black pixels: a few KB that decode to width×height."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def exif_jpeg(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif)


def reason_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(NormalizeError) as info:
        normalize_image(data, **kwargs)
    assert info.value.reason == str(info.value)
    return info.value.reason


# ---------------------------------------------------------------- refusals


def test_empty_file() -> None:
    assert reason_of(b"") == "empty file"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image (HTML/XML text)"),
        (b"   \n<?xml version='1.0'?><svg/>", "not an image (HTML/XML text)"),
        (b"just some text\n", "not an image (text)"),
        (bytes(range(256)) * 4, "not an image (unrecognised format)"),
    ],
)
def test_not_an_image(data: bytes, expected: str) -> None:
    assert reason_of(data) == expected


def test_truncated_jpeg() -> None:
    data = encode(photo((400, 300)), "JPEG", quality=90)
    reason = reason_of(data[: len(data) // 2])
    assert reason.startswith("corrupt image:") and "truncated" in reason


def test_truncated_png() -> None:
    data = encode(photo((400, 300)), "PNG")
    assert reason_of(data[: len(data) // 2]).startswith("corrupt image:")


def test_corrupt_png_header() -> None:
    data = encode(photo((40, 30)), "PNG")
    broken = data[:16] + b"\x00" * 8 + data[24:]  # zero width/height, bad CRC
    assert reason_of(broken)


def test_unsupported_format_is_refused_before_decoding() -> None:
    assert reason_of(encode(photo((40, 30)), "PPM")) == "unsupported image format PPM"


def test_decompression_bomb_is_refused_fast() -> None:
    bomb = png_bomb(30_000, 30_000)  # 900 megapixels in ~110 KB
    assert len(bomb) < 200_000
    start = time.perf_counter()
    reason = reason_of(bomb)
    assert time.perf_counter() - start < 1.0
    assert "too large" in reason and "pixels" in reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_range_is_refused() -> None:
    # 144 MP: over Pillow's warning limit (~89 MP), under its error limit (~179 MP).
    start = time.perf_counter()
    reason = reason_of(png_bomb(12_000, 12_000), max_source_pixels=10**9)
    assert time.perf_counter() - start < 1.0
    assert "pixels" in reason


def test_max_source_pixels_is_checked_from_the_header() -> None:
    data = encode(photo((1200, 1000)), "PNG")
    assert "1,200,000 pixels" in reason_of(data, max_source_pixels=1_000_000)
    assert normalize_image(data, max_source_pixels=1_200_000).width == 1200


def test_no_global_state_is_changed() -> None:
    filters = list(warnings.filters)
    limit, truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    for data in (b"", png_bomb(30_000, 30_000), encode(photo((300, 200)), "JPEG")[:500]):
        with pytest.raises(NormalizeError):
            normalize_image(data)
    normalize_image(encode(photo((300, 200)), "PNG"))
    assert warnings.filters == filters
    assert (limit, truncated) == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def test_error_type_and_pickling() -> None:
    err = NormalizeError("empty file")
    assert isinstance(err, ValueError) and err.reason == "empty file"
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, NormalizeError) and again.reason == "empty file"


@pytest.mark.parametrize(
    "kwargs", [{"max_side": 0}, {"max_bytes": 0}, {"max_source_pixels": 0}, {"jpeg_quality": 0}]
)
def test_bad_arguments_are_plain_value_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError) as info:
        normalize_image(encode(photo((8, 8)), "PNG"), **kwargs)
    assert not isinstance(info.value, NormalizeError)


# ---------------------------------------------------------------- sizes


def test_large_jpeg_is_downscaled_in_dct_domain() -> None:
    data = encode(photo((4000, 3000)), "JPEG", quality=85)
    result = normalize_image(data)
    im = decode(result)
    assert (result.source_width, result.source_height) == (4000, 3000)
    assert result.source_format == "JPEG"
    assert 2048 * DRAFT_MIN_FRACTION <= max(im.size) <= 2048
    assert im.size == (2000, 1500)  # 1/2 DCT scale; never upscaled back to 2048
    assert abs(im.width / im.height - 4 / 3) < 0.01


def test_large_jpeg_outside_draft_slack_is_resampled_to_the_target() -> None:
    result = normalize_image(encode(photo((3000, 2250)), "JPEG"))
    assert (result.width, result.height) == (2048, 1536)


def test_large_png_is_downscaled_to_the_target() -> None:
    result = normalize_image(encode(photo((4000, 3000)), "PNG", compress_level=1))
    assert (result.width, result.height) == (2048, 1536)
    assert (result.source_width, result.source_height) == (4000, 3000)


def test_max_side_is_honoured_as_given() -> None:  # the embedder's own cap is the caller's
    data = encode(photo((1600, 1000)), "PNG", compress_level=1)
    assert normalize_image(data, max_side=500).width == 500
    assert normalize_image(data, max_side=10_000).width == 1600
    assert normalize_image(encode(photo((3000, 800)), "PNG"), max_side=4096).width == 3000


def test_small_image_is_not_upscaled() -> None:
    result = normalize_image(encode(photo((10, 7)), "PNG"))
    assert (result.width, result.height) == (10, 7)


def test_noise_over_five_megabytes_fits_after_normalizing() -> None:
    noise = Image.frombytes("RGB", (2048, 2048), random.Random(1).randbytes(2048 * 2048 * 3))
    data = encode(noise, "PNG", compress_level=1)
    assert len(data) > FIVE_MB
    result = normalize_image(data)
    decode(result)
    assert len(result.data) <= FIVE_MB


def test_quality_then_size_are_lowered_to_fit_max_bytes() -> None:
    noise = Image.frombytes("RGB", (800, 600), random.Random(2).randbytes(800 * 600 * 3))
    data = encode(noise, "PNG", compress_level=1)
    full = normalize_image(data)
    smaller = normalize_image(data, max_bytes=len(full.data) // 2)
    assert len(smaller.data) <= len(full.data) // 2
    assert (smaller.width, smaller.height) == (800, 600)  # a lower quality sufficed
    tiny = normalize_image(data, max_bytes=30_000)
    assert len(tiny.data) <= 30_000
    assert tiny.width < 800 and abs(tiny.width / tiny.height - 4 / 3) < 0.02


def test_impossible_max_bytes_is_a_normalize_error() -> None:
    assert "within 100 bytes" in reason_of(encode(photo((64, 48)), "PNG"), max_bytes=100)


# ---------------------------------------------------------------- modes


def test_cmyk_jpeg_adobe_inverted() -> None:
    im = Image.new("CMYK", (64, 32), (0, 255, 255, 0))  # red
    ImageDraw.Draw(im).rectangle((32, 0, 63, 31), fill=(0, 0, 0, 0))  # white
    data = encode(im, "JPEG", quality=95)
    assert b"Adobe" in data  # Pillow writes Adobe's inverted convention
    out = decode(normalize_image(data))
    assert close_to(out.getpixel((8, 16)), RED)
    assert close_to(out.getpixel((56, 16)), WHITE)


def test_cmyk_jpeg_without_adobe_marker_is_plain_cmyk() -> None:
    # Pillow writes inverted samples plus an Adobe marker; writing the inverse of the image and
    # dropping the marker leaves plain CMYK samples (0 = no ink), as non-Adobe writers store them.
    im = Image.new("CMYK", (64, 32), (255, 0, 0, 255))  # the inverse of red
    ImageDraw.Draw(im).rectangle((32, 0, 63, 31), fill=(255, 255, 255, 255))  # inverse of white
    data = encode(im, "JPEG", quality=95)
    start = data.index(b"\xff\xee")  # APP14 "Adobe" segment
    length = struct.unpack(">H", data[start + 2 : start + 4])[0]
    plain = data[:start] + data[start + 2 + length :]
    assert b"Adobe" not in plain
    out = decode(normalize_image(plain))
    assert close_to(out.getpixel((8, 16)), RED)
    assert close_to(out.getpixel((56, 16)), WHITE)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt: str) -> None:
    im = Image.new("I;16", (64, 32), 32768)
    im.paste(Image.new("I;16", (16, 32), 65535), (48, 0))
    im.paste(Image.new("I;16", (16, 32), 0), (0, 0))
    data = encode(im, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode(normalize_image(data))
    assert close_to(out.getpixel((32, 16)), (128, 128, 128), tol=3)
    assert close_to(out.getpixel((56, 16)), WHITE, tol=3)
    assert close_to(out.getpixel((8, 16)), (0, 0, 0), tol=3)


def test_32_bit_int_and_float_greyscale() -> None:
    out = decode(normalize_image(encode(Image.new("I", (16, 16), 32768), "TIFF")))
    assert close_to(out.getpixel((8, 8)), (128, 128, 128), tol=3)
    out = decode(normalize_image(encode(Image.new("F", (16, 16), 0.5), "TIFF")))
    assert close_to(out.getpixel((8, 8)), (128, 128, 128), tol=3)


def test_palette_png_with_transparency_goes_onto_white() -> None:
    im = Image.new("P", (64, 32), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(im).rectangle((32, 0, 63, 31), fill=1)
    data = encode(im, "PNG", transparency=0)
    out = decode(normalize_image(data))
    assert close_to(out.getpixel((8, 16)), WHITE)  # transparent black → white
    assert close_to(out.getpixel((56, 16)), BLUE)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_onto_white(mode: str) -> None:
    im = Image.new("RGBA", (64, 32), (255, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((32, 0, 63, 31), fill=(0, 0, 0, 255))
    out = decode(normalize_image(encode(im.convert(mode), "PNG")))
    assert close_to(out.getpixel((8, 16)), WHITE)
    assert close_to(out.getpixel((56, 16)), (0, 0, 0))


def test_rgb_png_with_trns_colour_goes_onto_white() -> None:
    im = Image.new("RGB", (64, 32), RED)
    ImageDraw.Draw(im).rectangle((32, 0, 63, 31), fill=GREEN)
    out = decode(normalize_image(encode(im, "PNG", transparency=RED)))
    assert close_to(out.getpixel((8, 16)), WHITE)
    assert close_to(out.getpixel((56, 16)), GREEN)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("1", "PNG"), ("L", "JPEG"), ("L", "PNG"), ("P", "GIF"), ("P", "BMP")]
)
def test_other_modes_become_rgb(mode: str, fmt: str) -> None:
    im = Image.new("RGB", (32, 32), WHITE)
    ImageDraw.Draw(im).rectangle((0, 0, 15, 31), fill=(0, 0, 0))
    data = encode(im.convert(mode), fmt)
    out = decode(normalize_image(data))
    assert close_to(out.getpixel((4, 16)), (0, 0, 0))
    assert close_to(out.getpixel((28, 16)), WHITE)


# ---------------------------------------------------------------- orientation


def test_exif_orientation_6_swaps_dimensions_and_moves_the_marker() -> None:
    im = Image.new("RGB", (80, 40), WHITE)
    ImageDraw.Draw(im).rectangle((0, 0, 15, 15), fill=RED)  # stored top-left
    result = normalize_image(exif_jpeg(im, 6))  # 6 = rotate 90° clockwise to display
    out = decode(result)
    assert out.size == (40, 80)
    assert (result.source_width, result.source_height) == (40, 80)
    assert close_to(out.getpixel((40 - 6, 6)), RED)  # displayed top-right
    assert close_to(out.getpixel((6, 6)), WHITE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_exif_transpose(orientation: int) -> None:
    im = Image.new("RGB", (48, 32), WHITE)
    ImageDraw.Draw(im).rectangle((0, 0, 11, 7), fill=RED)
    ImageDraw.Draw(im).rectangle((36, 24, 47, 31), fill=BLUE)
    data = exif_jpeg(im, orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    out = decode(normalize_image(data))
    assert out.size == expected.size
    for xy in [(3, 3), (out.width - 4, 3), (3, out.height - 4), (out.width - 4, out.height - 4)]:
        assert close_to(out.getpixel(xy), expected.getpixel(xy), tol=40), xy


def test_orientation_with_dct_draft_on_a_large_jpeg() -> None:
    im = photo((4000, 3000))
    ImageDraw.Draw(im).rectangle((0, 0, 399, 299), fill=RED)
    result = normalize_image(exif_jpeg(im, 6))
    out = decode(result)
    assert out.size == (1500, 2000)
    assert (result.source_width, result.source_height) == (3000, 4000)
    assert close_to(out.getpixel((1500 - 40, 40)), RED)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_bad_exif_is_ignored() -> None:
    data = encode(photo((40, 30)), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert normalize_image(data).width == 40


# ---------------------------------------------------------------- formats


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), colour) for colour in (RED, GREEN, BLUE)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_the_first_frame(fmt: str) -> None:
    first, *rest = frames()
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode(normalize_image(data))
    assert close_to(out.getpixel((16, 16)), RED)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("WEBP", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("PNG", {}),
        ("GIF", {}),
        ("JPEG", {"quality": 95, "progressive": True}),
        ("MPO", {"save_all": True, "append_images": [Image.new("RGB", (48, 32), BLUE)]}),
    ],
)
def test_supported_formats(fmt: str, params: dict[str, object]) -> None:
    im = Image.new("RGB", (48, 32), RED)
    ImageDraw.Draw(im).rectangle((24, 0, 47, 31), fill=GREEN)
    result = normalize_image(encode(im, fmt, **params))
    assert result.source_format == fmt
    assert (result.width, result.height, result.source_width, result.source_height) == (
        48, 32, 48, 32,
    )
    out = decode(result)
    assert close_to(out.getpixel((6, 16)), RED, tol=30)
    assert close_to(out.getpixel((42, 16)), GREEN, tol=30)


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0112] = 1
    icc = b"\x00" * 128  # not a real profile; only its absence in the output is checked
    data = encode(photo((64, 48)), "JPEG", exif=exif, icc_profile=icc, comment=b"hello")
    result = normalize_image(data)
    decode(result)
    assert b"Exif" not in result.data and b"ICC_PROFILE" not in result.data
    assert b"hello" not in result.data and b"\xff\xfe" not in result.data[:200]  # no COM


def test_long_gif_comment_does_not_break_encoding() -> None:
    # Pillow copies info["comment"] into a saved JPEG and refuses one over 65533 bytes.
    data = encode(photo((64, 48)), "GIF", comment=b"x" * 70_000)
    assert b"x" * 100 not in normalize_image(data).data


# ---------------------------------------------------------------- model and purity


def test_model_is_frozen_and_repr_omits_bytes() -> None:
    result = normalize_image(encode(photo((64, 48)), "PNG"))
    with pytest.raises(pydantic.ValidationError):
        result.width = 1  # type: ignore[misc]
    assert "data" not in repr(result) and "width=64" in repr(result)
    assert isinstance(NORMALIZE_VERSION, int) and NORMALIZE_VERSION >= 1


def test_deterministic_and_thread_safe() -> None:
    inputs = [
        encode(photo((2100, 1400), seed=i), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "JPEG", "GIF", "TIFF"])
    ]
    sequential = [normalize_image(d) for d in inputs]
    assert [normalize_image(d) for d in inputs] == sequential
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(normalize_image, inputs * 2))
    assert concurrent == sequential * 2

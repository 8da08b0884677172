"""Tests of normalize's lossless pass-through of JPEGs Titan accepts as they are.

A passed-through JPEG keeps its entropy-coded scan byte for byte; a re-encoded one does not,
so ``scan(output) == scan(input)`` tells which path an image took. Fixtures are generated here.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgrag.normalize import NormalizeError, normalize_image

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB image: colour gradients, shapes and a little grain."""
    rng = np.random.default_rng(seed)
    width, height = size
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    im = field.resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x, y, x + width // 5, y + height // 5), fill=(200, 30, 60))
    grain = rng.integers(-6, 7, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + grain, 0, 255).astype("uint8"))


def jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88, **params)
    return buf.getvalue()


def with_metadata(im: Image.Image, orientation: int = 1, **params: object) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0112] = orientation
    icc = b"\x00" * 128  # not a real profile: only its absence in the output is checked
    return jpeg(im, exif=exif, icc_profile=icc, comment=b"secret note", xmp=XMP, **params)


def scan(data: bytes) -> bytes:
    """Everything from the first SOS marker to the end of the first EOI."""
    start = data.index(b"\xff\xda")
    return data[start : data.index(b"\xff\xd9", start) + 2]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_compliant_jpeg_keeps_its_scan_and_pixels_and_loses_its_metadata() -> None:
    data = with_metadata(photo((640, 480)))
    result = normalize_image(data)
    assert scan(result.data) == scan(data)
    assert np.array_equal(pixels(result.data), pixels(data))  # lossless, not a re-encode
    assert len(result.data) < len(data)
    assert (result.width, result.height, result.source_width, result.source_height) == (
        640, 480, 640, 480,
    )
    assert result.source_format == "JPEG"
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.format == "JPEG" and out.mode == "RGB" and not out.info.get("progressive")
        assert len(out.getexif()) == 0
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(out.info)
    for secret in (b"Camera maker", b"secret note", b"xmpmeta", b"ICC_PROFILE", b"Exif"):
        assert secret not in result.data


def test_passed_through_jpeg_ignores_jpeg_quality() -> None:
    data = jpeg(photo((320, 240)))
    assert normalize_image(data, jpeg_quality=50).data == normalize_image(data).data
    assert scan(normalize_image(data, jpeg_quality=50).data) == scan(data)


def test_jfif_thumbnail_and_bytes_after_eoi_are_dropped() -> None:
    data = jpeg(photo((320, 240)))
    assert data[6:11] == b"JFIF\x00"
    thumb = bytes([2, 1]) + bytes(range(6))  # a 2×1 RGB thumbnail
    app0 = data[4 + 2 : 4 + 14] + thumb  # JFIF header + thumbnail
    with_thumb = (data[:2] + b"\xff\xe0" + (len(app0) + 2).to_bytes(2, "big") + app0
                  + data[2 + int.from_bytes(data[4:6], "big") + 2 :])
    result = normalize_image(with_thumb + b"trailing private data \xff\xd8 after the image")
    assert scan(result.data) == scan(data)
    assert result.data.endswith(b"\xff\xd9") and b"trailing" not in result.data
    assert bytes(range(6)) not in result.data[:200]
    assert np.array_equal(pixels(result.data), pixels(data))


@pytest.mark.parametrize("orientation", [1, 0, 9])  # invalid values mean "no rotation"
def test_orientation_1_or_invalid_is_passed_through(orientation: int) -> None:
    data = with_metadata(photo((320, 240)), orientation=orientation)
    result = normalize_image(data)
    assert scan(result.data) == scan(data) and (result.width, result.height) == (320, 240)


def test_orientation_6_is_re_encoded_rotated() -> None:
    data = with_metadata(photo((320, 240)), orientation=6)
    result = normalize_image(data)
    assert (result.width, result.height) == (240, 320)
    assert (result.source_width, result.source_height) == (240, 320)
    assert scan(result.data) != scan(data)
    with Image.open(io.BytesIO(result.data)) as out:
        assert len(out.getexif()) == 0


def test_larger_than_max_side_is_re_encoded_smaller() -> None:
    data = jpeg(photo((1000, 750)))
    result = normalize_image(data, max_side=500)
    assert (result.width, result.height) == (500, 375)
    assert normalize_image(data).data == data  # within the default 2048: passed through


def test_jpeg_without_metadata_comes_out_byte_for_byte() -> None:
    data = jpeg(photo((320, 240)))  # Pillow writes SOI, JFIF (no thumbnail), tables, scan, EOI
    assert normalize_image(data).data == data


def test_over_max_bytes_is_re_encoded_within_it() -> None:
    data = jpeg(photo((640, 480)))
    result = normalize_image(data, max_bytes=len(data) - 1)
    assert len(result.data) < len(data) and scan(result.data) != scan(data)


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("CMYK", {}),  # 4 components, Adobe inverted
        ("L", {}),  # 1 component: the output is RGB
        ("RGB", {"progressive": True}),  # not baseline
        ("RGB", {"subsampling": 0, "qtables": "web_high"}),  # baseline too: passed through
    ],
)
def test_only_baseline_ycbcr_jpegs_pass_through(mode: str, params: dict[str, object]) -> None:
    data = jpeg(photo((160, 120)).convert(mode), **params)
    result = normalize_image(data)
    passed = scan(result.data) == scan(data)
    assert passed == (mode == "RGB" and not params.get("progressive"))
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.mode == "RGB" and not out.info.get("progressive")
    reference = pixels(data)
    assert np.abs(pixels(result.data).astype(int) - reference).mean() < 3


def test_truncated_compliant_jpeg_still_fails() -> None:
    data = jpeg(photo((640, 480)))
    with pytest.raises(NormalizeError, match="truncated"):
        normalize_image(data[: len(data) // 2])


def test_declared_pixels_over_the_limit_still_fail() -> None:
    data = jpeg(photo((320, 240)))
    with pytest.raises(NormalizeError, match="image too large"):
        normalize_image(data, max_source_pixels=320 * 240 - 1)


@pytest.mark.filterwarnings("ignore:::PIL.TiffImagePlugin")  # mangled EXIF
def test_mangled_headers_never_fail_differently() -> None:
    """Byte flips in the marker segments: each result is a valid JPEG or a NormalizeError."""
    data = with_metadata(photo((64, 48)))
    header_end = data.index(b"\xff\xda") + 14
    rng = random.Random(7)
    outcomes = set()
    for _ in range(150):
        mangled = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mangled[rng.randrange(2, header_end)] = rng.randrange(256)
        try:
            result = normalize_image(bytes(mangled))
        except NormalizeError:
            outcomes.add("refused")
            continue
        with Image.open(io.BytesIO(result.data)) as out:
            out.load()
            assert out.format == "JPEG" and out.mode == "RGB" and "exif" not in out.info
        outcomes.add("passed" if scan(result.data) in mangled else "re-encoded")
    assert "passed" in outcomes  # flips inside dropped metadata leave the image eligible


def test_well_formed_jpeg_that_cannot_be_decoded_is_refused() -> None:
    data = bytearray(jpeg(photo((320, 240))))
    sof = data.index(b"\xff\xc0")
    data[sof + 12] = 3  # component 1 uses quantization table 3, which is never defined
    with pytest.raises(NormalizeError, match="corrupt image"):
        normalize_image(bytes(data))


def test_damaged_scan_is_passed_through_as_a_full_decode_would_accept_it() -> None:
    """Pass-through decodes only the start of the scan: that loses nothing as long as libjpeg
    decodes damaged entropy-coded data without failing (it warns and fills)."""
    data = jpeg(photo((320, 240)))
    start = data.index(b"\xff\xda") + 14
    rng = random.Random(11)
    for _ in range(40):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 10, 100))):
            at = rng.randrange(start, len(damaged) - 2)
            if 0xFF not in damaged[at - 1 : at + 1]:  # leave markers and stuffing alone
                damaged[at] = rng.randrange(0xFF)
        with Image.open(io.BytesIO(bytes(damaged))) as full:
            full.load()  # the re-encode path's decode: it must not fail either
        assert scan(normalize_image(bytes(damaged)).data) == scan(bytes(damaged))

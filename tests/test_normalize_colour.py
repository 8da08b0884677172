"""Colour profiles: an embedded ICC profile is applied (converted to sRGB), not dropped.

The non-sRGB profiles are built here, byte by byte (ICC v2 matrix/TRC display profiles), so
the tests need no profile file from the system.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from imgrag.normalize import normalize_image

# Primaries adapted to D50 (the PCS white), as in the published profiles; gamma 2.2.
ADOBE_RGB = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
             (0.14919, 0.06322, 0.74457))
DISPLAY_P3 = ((0.51512, 0.24120, -0.00105), (0.29198, 0.69225, 0.04189),
              (0.15710, 0.06657, 0.78407))
D50 = (0.9642, 1.0, 0.8249)
COLOUR = (40, 170, 90)  # a mid green: inside both gamuts, far from sRGB's value of it


def _xyz(values: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _desc(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67)


def rgb_profile(name: str, primaries: tuple[tuple[float, float, float], ...]) -> bytes:
    """An ICC v2 RGB display profile with the given colorants and a 2.2 gamma curve."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [(b"desc", _desc(name)), (b"cprt", b"text\0\0\0\0test\0"), (b"wtpt", _xyz(D50)),
            (b"rXYZ", _xyz(primaries[0])), (b"gXYZ", _xyz(primaries[1])),
            (b"bXYZ", _xyz(primaries[2])), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + b"".join(struct.pack(">i", round(v * 65536)) for v in D50) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def tagged(fmt: str, icc: bytes | None, colour: tuple[int, int, int] = COLOUR) -> bytes:
    buf = io.BytesIO()
    params = {"icc_profile": icc} if icc else {}
    Image.new("RGB", (64, 48), colour).save(buf, format=fmt, **params)
    return buf.getvalue()


def centre(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert "icc_profile" not in im.info  # the output is untagged: read as sRGB
        return np.asarray(im.convert("RGB"), dtype=int)[24, 32]


def in_srgb(icc: bytes, colour: tuple[int, int, int]) -> np.ndarray:
    """``colour`` in the profile ``icc``, as sRGB, by LittleCMS directly."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = ImageCms.profileToProfile(Image.new("RGB", (1, 1), colour), src, dst,
                                    ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(out, dtype=int)[0, 0]


@pytest.mark.parametrize("name, primaries", [("Adobe RGB (1998)", ADOBE_RGB),
                                             ("Display P3", DISPLAY_P3)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_wide_gamut_profile_is_converted_to_srgb(name, primaries, fmt) -> None:
    icc = rgb_profile(name, primaries)
    expected = in_srgb(icc, COLOUR)
    assert np.abs(expected - COLOUR).max() > 15  # the conversion is visible at all

    out = centre(normalize_image(tagged(fmt, icc)).data)

    assert np.abs(out - expected).max() <= 4  # JPEG rounding, not the unconverted colour


@pytest.mark.parametrize("icc", [None, ImageCms.ImageCmsProfile(
    ImageCms.createProfile("sRGB")).tobytes(), b"\0" * 128])
def test_untagged_srgb_or_unreadable_profiles_keep_pixels_and_pass_through(icc) -> None:
    data = tagged("JPEG", icc)
    result = normalize_image(data)

    assert result.data[result.data.index(b"\xff\xda"):] == data[data.index(b"\xff\xda"):]
    assert np.abs(centre(result.data) - COLOUR).max() <= 3

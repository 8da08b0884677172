"""A hostile-input fixture corpus, generated at test time (no committed binaries).

``VALID`` maps a key to bytes that must be indexed (odd formats, modes, orientations, and
images over Titan's limits that must be downscaled); ``INVALID`` maps a key to bytes that
must be refused with a readable reason; ``HOSTILE_KEYS`` are object keys that must be
indexed under their exact ``s3://`` URI without touching the filesystem.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable

from PIL import Image

BOMB_SIDE = 30_000


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _gradient(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """An RGB image with structure (so truncation cuts real pixel data)."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // width, y * 255 // height, 128)
                   for y in range(height) for x in range(width)])
    return image


def cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (64, 48), (0, 200, 200, 0)), "JPEG")


def grey16_png() -> bytes:
    image = Image.new("I;16", (64, 48))
    image.putdata([(x * 1000) % 65536 for x in range(64 * 48)])
    return _save(image, "PNG")


def palette_transparent_png() -> bytes:
    image = Image.new("P", (64, 48), 1)
    image.putpalette([0, 0, 0, 20, 200, 40] + [0] * 762)
    image.paste(0, (0, 0, 32, 48))
    return _save(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    return _save(Image.new("RGBA", (64, 48), (30, 40, 220, 128)), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 80×40, EXIF orientation 6 (rotate 90° clockwise): displayed 40×80."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.new("RGB", (80, 40), (240, 220, 30)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in ((220, 20, 30), (20, 40, 220), (0, 0, 0))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def webp() -> bytes:
    return _save(_gradient(), "WEBP")


def bmp() -> bytes:
    return _save(_gradient(), "BMP")


def tiff() -> bytes:
    return _save(_gradient(), "TIFF")


def over_pixel_limit_jpeg() -> bytes:
    """Valid, 4000×3000: above Titan's 2048-pixel side limit, small in bytes."""
    return _save(Image.new("RGB", (4000, 3000), (30, 200, 40)), "JPEG")


def over_byte_limit_png() -> bytes:
    """Valid, 1400×1400 of noise: about 5.9 MB, above Titan's 5 MB limit."""
    return _save(Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3)), "PNG",
                 compress_level=1)


def truncated_jpeg() -> bytes:
    data = _save(_gradient((256, 256)), "JPEG", quality=95)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = _save(_gradient((256, 256)), "PNG")
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A few hundred bytes declaring side×side 8-bit RGB pixels (2.7 GB decoded).

    The IDAT holds only the first rows: decoding would fail as truncated, so a refusal that
    says "too large" proves the size was checked before any pixel was decoded.
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * side) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND", b""))


def small_jpeg(rgb: tuple[int, int, int] = (220, 20, 30), seed: int = 0) -> bytes:
    image = Image.new("RGB", (64, 48), rgb)
    image.putpixel((0, 0), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    return _save(image, "JPEG")


VALID: dict[str, Callable[[], bytes]] = {
    "valid/cmyk.jpg": cmyk_jpeg,
    "valid/grey16.png": grey16_png,
    "valid/palette-transparent.png": palette_transparent_png,
    "valid/rgba.png": rgba_png,
    "valid/exif-rotated.jpg": exif_rotated_jpeg,
    "valid/animated.gif": animated_gif,
    "valid/image.webp": webp,
    "valid/image.bmp": bmp,
    "valid/image.tiff": tiff,
    "valid/over-pixel-limit.jpg": over_pixel_limit_jpeg,
    "valid/over-byte-limit.png": over_byte_limit_png,
}

# key → (bytes factory, a word the failure reason must contain)
INVALID: dict[str, tuple[Callable[[], bytes], str]] = {
    "invalid/zero-bytes.jpg": (lambda: b"", "empty"),
    "invalid/truncated.jpg": (truncated_jpeg, "truncated"),
    "invalid/truncated.png": (truncated_png, "truncated"),
    "invalid/text.jpg": (lambda: b"just some notes, not a picture\n" * 4, "not an image"),
    "invalid/page.jpg": (
        lambda: b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
        "not an image",
    ),
    "invalid/bomb.png": (bomb_png, "too large"),
}

HOSTILE_KEYS: tuple[str, ...] = (
    "../../x.jpg",
    "a/../../x.jpg",
    "/abs.jpg",
    "//double/slash.jpg",
    "./dot.jpg",
    "unicodé/日本語 ファイル/ñandú.jpg",
    "with spaces/a  b c.jpg",
    "percent%2F..%2Fescaped.jpg",
    "long/" + "k" * (1000 - len("long/") - len(".jpg")) + ".jpg",
)

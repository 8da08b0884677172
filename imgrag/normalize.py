"""Image normalization: image bytes in, a JPEG within given limits (side, bytes) out.

The limits are plain numbers: the embedder declares its own (``max_image_side``,
``max_image_bytes``) and ``imgrag.pipeline.normalize_for_model`` passes them in.
:func:`normalize_image` decodes whatever Pillow reads safely (JPEG, PNG, WebP, GIF, BMP, TIFF,
MPO), refuses non-images, corrupt files and decompression bombs with a :class:`NormalizeError`
carrying a short reason, and otherwise returns a baseline RGB JPEG without metadata.

Notes on the choices made here:

- The declared size is checked from the header before any pixel is decoded. The limit is
  ``min(max_source_pixels, PIL.Image.MAX_IMAGE_PIXELS)``: everything Pillow would only *warn*
  about as a possible decompression bomb is refused, without touching the process-wide
  ``warnings`` filters (``warnings.catch_warnings`` is not thread-safe on Python 3.11) or
  ``Image.MAX_IMAGE_PIXELS``.
- JPEG sources are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (``Image.draft``) when
  that lands the longest side within ``DRAFT_MIN_FRACTION`` of the target. The output is then
  that size, never upscaled: a 4000×3000 photo comes out 2000×1500 rather than 2048×1536,
  about 4× faster than a full decode and resample (``python -m bench.normalize``). A target
  of exactly 2048 would rule draft out for these (Pillow only scales by 1/2, 1/4, 1/8 and
  never below the requested size). Other sources are resampled to the target.
- Transparency is flattened onto white; 16-bit and float greyscale are scaled, not clipped;
  CMYK JPEGs without an Adobe marker are read as plain (non-inverted) CMYK.
- An embedded ICC colour profile is applied: the pixels are converted to sRGB (relative
  colorimetric), which the output, untagged, is read as. Untagged images, sRGB profiles and
  profiles LittleCMS cannot read keep their pixel values.
- A baseline 8-bit YCbCr JPEG that is already within the limits, with no EXIF rotation, is
  passed through losslessly: the same tables and scan, metadata segments removed, instead of
  being decoded and re-encoded; libjpeg checks its headers and the start of its scan (see
  :func:`_pass_through`). A JPEG tagged with a profile other than sRGB is converted instead.
"""

from __future__ import annotations

import functools
import io
import math
import re

import pydantic
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

NORMALIZE_VERSION: int = 1
"""Bump whenever the picture the model sees for a given input changes (stored in record
metadata: older records are embedded again); not for byte-level changes to the same picture.
Not bumped when ICC profiles began to be applied: only images tagged with a non-sRGB profile
look different, and a bump would re-embed (and bill) every record of every index."""

MAX_SOURCE_PIXELS = 89_478_485
"""Default declared-pixel limit: Pillow's own decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``), also the default of ``Settings.max_source_pixels``."""

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
"""Pillow format names accepted as input; anything else is refused before decoding."""

DRAFT_MIN_FRACTION = 0.9
"""A JPEG decoded at reduced DCT scale may end up this fraction of the target side, or more."""

QUALITY_STEPS = (80, 70, 60, 50)
"""JPEG qualities tried, in order, after ``jpeg_quality`` when the output is over ``max_bytes``."""

_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 2.0
_WHITE = (255, 255, 255)
_MIN_SIDE_WHEN_SHRINKING = 16
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # the same table as PIL.ImageOps.exif_transpose
_TEXT_BYTES = bytes({7, 8, 9, 10, 12, 13, 27} | set(range(0x20, 0x100)) - {0x7F})
_PROFILE_MODES = {"RGB ": "RGB", "CMYK": "CMYK", "GRAY": "L"}  # ICC colour space → mode


class NormalizeError(ValueError):
    """Input cannot be turned into a valid image; ``.reason`` is a short human-readable cause."""

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NormalizedImage(pydantic.BaseModel):
    """A JPEG ready for the embedding model, with its size and the source's format and size.

    ``source_width``/``source_height`` are the source's size as displayed (EXIF orientation
    applied), so their aspect ratio matches ``width``/``height``.
    """

    model_config = pydantic.ConfigDict(frozen=True)

    data: bytes = pydantic.Field(repr=False)
    width: int
    height: int
    source_format: str | None
    source_width: int
    source_height: int


def normalize_image(
    data: bytes,
    *,
    max_side: int = 2048,
    max_bytes: int = 5 * 1024 * 1024,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
    jpeg_quality: int = 90,
) -> NormalizedImage:
    """Decode ``data`` and re-encode it as a baseline RGB JPEG within the given limits.

    The longest side is at most ``max_side`` (images are downscaled, never
    upscaled; a JPEG decoded at reduced DCT scale may land up to ``1 - DRAFT_MIN_FRACTION``
    below it), the JPEG at most ``max_bytes`` (lower qualities, then smaller sizes, are tried),
    with EXIF orientation applied and all metadata dropped. Only the first frame of an
    animation is used. A baseline JPEG already within the limits and upright keeps its own
    compressed pixels (``jpeg_quality`` does not apply) and loses only its metadata.
    Pure and thread-safe.

    Raises:
        NormalizeError: the input is empty, not a supported image, corrupt, or declares more
            pixels than ``max_source_pixels`` (or Pillow's own decompression-bomb limit).
        ValueError: an argument is out of range.
    """
    if max_side < 1 or max_bytes < 1 or max_source_pixels < 1:
        raise ValueError("max_side, max_bytes and max_source_pixels must be positive")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    if not data:
        raise NormalizeError("empty file")

    target = max_side
    passed = _pass_through(data, target, max_bytes, max_source_pixels)
    if passed is not None:
        return passed
    image, source_format, (source_w, source_h), orientation = _decode(
        data, target, max_source_pixels
    )
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    profile = _source_profile(image.info.get("icc_profile"))
    try:
        early = _to_srgb(image, profile) if image.mode in ("CMYK", "L") else image
        rgb = _to_srgb(_downscale(_to_rgb(early), target), profile)  # RGB: after downscaling
        if method is not None:
            rgb = rgb.transpose(method)
        encoded, rgb = _encode_within(rgb, max_bytes, jpeg_quality)
    except NormalizeError:
        raise
    except (OSError, ValueError) as exc:
        raise NormalizeError(f"cannot convert image: {_describe(exc)}") from exc
    finally:
        image.close()
    if orientation >= 5:  # the orientations that swap width and height
        source_w, source_h = source_h, source_w
    return NormalizedImage(
        data=encoded,
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
        source_width=source_w,
        source_height=source_h,
    )


def _decode(
    data: bytes, target: int, max_source_pixels: int
) -> tuple[Image.Image, str, tuple[int, int], int]:
    """Open, check and fully decode ``data``.

    Returns the decoded image (possibly DCT-scaled, not yet oriented), its format, its stored
    size as declared in the header, and its EXIF orientation.
    """
    limit = max_source_pixels
    if Image.MAX_IMAGE_PIXELS is not None:  # read, never written
        limit = min(limit, Image.MAX_IMAGE_PIXELS)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NormalizeError(_unidentified_reason(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise NormalizeError(f"image too large: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise anything on malformed headers
        raise NormalizeError(f"corrupt image: {_describe(exc)}") from None
    try:
        fmt = im.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise NormalizeError(f"unsupported image format {fmt}")
        stored = im.size
        _check_pixels(stored, limit)  # header only: nothing is decoded yet
        if max(stored) > target:
            im.draft("RGB", _draft_request(stored, target))  # a no-op except for JPEG
        im.load()  # full decode: a truncated file fails here
        _check_pixels(im.size, limit)  # GIF frames may grow the canvas while loading
        orientation = _orientation(im)
        if im.mode == "CMYK" and fmt in ("JPEG", "MPO") and "adobe" not in im.info:
            im = _invert_cmyk(im)  # Pillow assumes Adobe's inverted CMYK; this is plain CMYK
    except NormalizeError:
        im.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        im.close()
        raise NormalizeError(f"image too large: {exc}") from None
    except MemoryError:
        im.close()
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error…
        im.close()
        raise NormalizeError(f"corrupt image: {_describe(exc)}") from None
    return im, fmt, stored, orientation


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise NormalizeError(f"invalid image size {width}x{height}")
    if width * height > limit:
        raise NormalizeError(
            f"image too large: {width}x{height} = {width * height:,} pixels, "
            f"limit is {limit:,} pixels"
        )


def _draft_request(size: tuple[int, int], target: int) -> tuple[int, int]:
    """The smallest decoded size accepted from a JPEG DCT-scaled decode."""
    scale = target * DRAFT_MIN_FRACTION / max(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1–8), 1 when absent or unreadable (a bad EXIF block is not fatal)."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if value in _ORIENTATION_TRANSPOSE else 1
    except Exception:  # malformed EXIF raises all sorts
        return 1


def _invert_cmyk(im: Image.Image) -> Image.Image:
    inverted = im.point(lambda v: 255 - v)
    inverted.info = im.info
    im.close()
    return inverted


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha onto white, deep greyscale scaled to 8 bits."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _HIGH_DEPTH_MODES:
        return _deep_grey_to_l(im).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise NormalizeError(f"unsupported image mode {mode}") from exc


def _source_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    """The embedded colour profile, when applying it changes the picture: None for no
    profile, one LittleCMS cannot read, or an sRGB one."""
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return None
    return None if "srgb" in description.lower() else profile


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(im: Image.Image, profile: ImageCms.ImageCmsProfile | None) -> Image.Image:
    """``im`` converted from ``profile`` to sRGB RGB, when the profile describes its mode
    (RGB, CMYK or L); otherwise, or if LittleCMS refuses, ``im`` itself."""
    if profile is None or _PROFILE_MODES.get(profile.profile.xcolor_space) != im.mode:
        return im
    try:
        transform = ImageCms.buildTransform(
            profile, _srgb(), im.mode, "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC)
        return ImageCms.applyTransform(im, transform) or im
    except (OSError, ValueError, ImageCms.PyCMSError):
        return im


def _deep_grey_to_l(im: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer / float greyscale to 8 bits instead of clipping at 255.

    Integer data within 0..65535 is taken as 16-bit; float data within 0..1 as normalised;
    anything else is stretched from its minimum to its maximum.
    """
    if im.mode not in ("I", "F"):
        im = im.convert("I")
    lo, hi = im.getextrema()
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        scale, offset = 255 / 65535, 0.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scale, offset = 255.0, 0.0
    elif hi > lo:
        scale, offset = 255 / (hi - lo), -lo * 255 / (hi - lo)
    else:
        scale, offset = 0.0, 0.0 if hi <= 0 else 255.0
    offset += 0.5  # round rather than truncate
    return im.point(lambda v: v * scale + offset).convert("L")


def _downscale(im: Image.Image, target: int) -> Image.Image:
    """Bound the longest side by ``target``, keeping the aspect ratio; never upscale."""
    if max(im.size) <= target:
        return im
    return im.resize(_fit(im.size, target), _RESAMPLE, reducing_gap=_REDUCING_GAP)


def _fit(size: tuple[int, int], target: int) -> tuple[int, int]:
    width, height = size
    ratio = target / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _encode_within(
    im: Image.Image, max_bytes: int, jpeg_quality: int
) -> tuple[bytes, Image.Image]:
    """Encode as JPEG; lower the quality, then the size, until the result fits ``max_bytes``."""
    qualities = [jpeg_quality, *(q for q in QUALITY_STEPS if q < jpeg_quality)]
    for quality in qualities:
        encoded = _encode(im, quality)
        if len(encoded) <= max_bytes:
            return encoded, im
    quality = qualities[-1]
    while max(im.size) > _MIN_SIDE_WHEN_SHRINKING:
        factor = min(0.9, max(0.5, 0.95 * math.sqrt(max_bytes / len(encoded))))
        im = im.resize(_fit(im.size, max(1, int(max(im.size) * factor))), _RESAMPLE)
        encoded = _encode(im, quality)
        if len(encoded) <= max_bytes:
            return encoded, im
    raise NormalizeError(f"cannot encode the image within {max_bytes} bytes")


def _encode(im: Image.Image, quality: int) -> bytes:
    """Baseline JPEG without metadata.

    EXIF, ICC and XMP are only written when passed to ``save``; the comment is taken from
    ``im.info`` unless given, so it is blanked explicitly.
    """
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, progressive=False, optimize=False, comment=b"")
    return buf.getvalue()


def _unidentified_reason(data: bytes) -> str:
    head = data[:512].lstrip()
    if head[:1] == b"<":
        return "not an image (HTML/XML text)"
    if not head.translate(None, _TEXT_BYTES):
        return "not an image (text)"
    return "not an image (unrecognised format)"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


# ---------------------------------------------------------------- lossless JPEG pass-through
#
# Most catalogue photos are already JPEGs Titan accepts. Those are sent as they are, minus
# their metadata, instead of being decoded and re-encoded: no generation loss, a smaller
# request, and a tenth of the CPU (libjpeg still reads the headers and the start of the scan,
# see _decoder_accepts). NORMALIZE_VERSION is deliberately not bumped for this: the model
# sees the same picture (the source's own pixels rather than a quality-90 copy of them, a
# mean difference of about 1/255), so the vectors already stored stay valid, and a bump
# would re-embed, and pay for, every record of every index on its next run.

_PASS_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: its first image is the JPEG kept
_DQT, _DHT, _DRI, _SOF0, _SOS, _EOI = 0xDB, 0xC4, 0xDD, 0xC0, 0xDA, 0xD9
_APP0, _APP14, _COM = 0xE0, 0xEE, 0xFE
_JFIF_HEADER_LEN = 12  # "JFIF\0", version, units, densities; the thumbnail that follows goes
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # first marker after entropy-coded data
_VERIFY_SCAN_BYTES = 4096  # entropy-coded bytes libjpeg decodes to accept a pass-through


def _pass_through(
    data: bytes, target: int, max_bytes: int, max_source_pixels: int
) -> NormalizedImage | None:
    """``data`` itself without its metadata, if it is a JPEG Titan takes as is; else None.

    Eligible: a baseline (SOF0) 8-bit YCbCr JPEG, one interleaved scan, longest side within
    ``target``, pixels within the limits, EXIF orientation 1 (or none), no colour profile but
    sRGB (or one that cannot be read), at most ``max_bytes`` once stripped, a scan that runs
    to EOI, and tables libjpeg takes. Everything else, any
    structure this parser does not expect, gets None and takes the decode/re-encode path,
    which also words the errors: this path never refuses an image.
    """
    parsed = _strip_jpeg_metadata(data)
    if parsed is None or len(parsed[0]) > max_bytes:
        return None
    stripped, scan_start = parsed
    try:
        with Image.open(io.BytesIO(data)) as source:
            fmt, (width, height) = source.format, source.size
            orientation = _orientation(source)
            profile = _source_profile(source.info.get("icc_profile"))
    except Exception:  # the other path reports it
        return None
    limit = max_source_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, Image.MAX_IMAGE_PIXELS)
    if (
        fmt not in _PASS_FORMATS
        or orientation != 1
        or profile is not None
        or max(width, height) > target
        or width * height > limit
        or not _decoder_accepts(stripped, scan_start, (width, height))
    ):
        return None
    return NormalizedImage(
        data=stripped,
        width=width,
        height=height,
        source_format=fmt,
        source_width=width,
        source_height=height,
    )


def _strip_jpeg_metadata(data: bytes) -> tuple[bytes, int] | None:
    """The JPEG without APP1–APP13, APP15, COM, JFIF thumbnails or bytes after EOI, and the
    offset of its entropy-coded data.

    Kept verbatim: DQT, DHT, DRI, SOF0, APP14 (Adobe: the colour transform) and the scan up to
    and including EOI. None unless the file is SOI, then only those segments (and dropped
    ones), a 3-component 8-bit SOF0 that is not coded as RGB, and one 3-component scan
    followed by EOI.
    """
    if data[:2] != b"\xff\xd8":
        return None
    kept = [b"\xff\xd8"]
    seen: set[int] = set()
    sof = b""
    adobe_transform: int | None = None
    pos, size = 2, len(data)
    while True:
        while pos + 1 < size and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > size or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end < pos + 4 or end > size:
            return None
        payload = data[pos + 4 : end]
        if marker == _SOS:
            break
        if marker == _APP0:
            if payload[:5] == b"JFIF\x00" and len(payload) >= _JFIF_HEADER_LEN + 2:
                kept.append(b"\xff\xe0\x00\x10" + payload[:_JFIF_HEADER_LEN] + b"\x00\x00")
        elif marker == _APP14:
            if payload[:5] != b"Adobe" or len(payload) < 12:
                return None
            adobe_transform = payload[11]
            kept.append(data[pos:end])
        elif marker in (_DQT, _DHT, _DRI) or (marker == _SOF0 and not sof):
            sof = payload if marker == _SOF0 else sof
            kept.append(data[pos:end])
        elif not (0xE1 <= marker <= 0xEF or marker == _COM):
            return None  # SOF1–SOF15, DAC, DNL, a second SOF0, RSTn, stray markers…
        seen.add(marker)
        pos = end
    if not (_DQT in seen and _DHT in seen and _is_ycbcr_sof(sof, adobe_transform)):
        return None
    if len(payload) != 10 or payload[0] != 3:  # one interleaved scan of the 3 components
        return None
    scan_end = _SCAN_END.search(data, end)
    if scan_end is None or data[scan_end.start() + 1] != _EOI:
        return None  # truncated, or more scans/markers: the other path decides
    header = b"".join(kept) + data[pos:end]
    return header + data[end : scan_end.start() + 2], len(header)


def _is_ycbcr_sof(sof: bytes, adobe_transform: int | None) -> bool:
    """An 8-bit, 3-component frame of non-zero size that decoders read as YCbCr."""
    if len(sof) != 15 or sof[0] != 8 or sof[5] != 3:
        return False
    height, width = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
    rgb_ids = bytes(sof[6:15:3]) == b"RGB"  # libjpeg reads these ids as RGB, not YCbCr
    return height > 0 and width > 0 and not rgb_ids and adobe_transform in (None, 1)


def _decoder_accepts(jpeg: bytes, scan_start: int, size: tuple[int, int]) -> bool:
    """Whether libjpeg takes the JPEG's tables, frame and scan header: they are decoded with
    the first ``_VERIFY_SCAN_BYTES`` of the scan (then EOI), at 1/8 scale.

    Decoding the whole scan would prove nothing more: it is already known to run to EOI with
    no other marker in it, and libjpeg does not fail on damaged entropy-coded data, it warns
    and fills (200 of 200 randomly damaged scans decoded). Bad tables or headers do fail, at
    once; a full decode cost ≈ 5 ms for a 2-megapixel photo, most of this path's CPU.
    """
    head = jpeg if len(jpeg) - scan_start <= _VERIFY_SCAN_BYTES else (
        jpeg[: scan_start + _VERIFY_SCAN_BYTES] + b"\xff\xd9")
    try:
        with Image.open(io.BytesIO(head)) as im:
            if im.format != "JPEG" or im.mode != "RGB" or im.size != size:
                return False
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except MemoryError:
        raise
    except Exception:  # bad tables or headers: the other path reports it
        return False
    return True

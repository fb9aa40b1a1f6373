"""Validate downloaded bytes: sniff the format from the bytes, strip the metadata, guard against decompression
bombs, decode the stripped bytes fully, and reject what PASS rejected (corrupt, single-colour) plus tiny,
extreme-aspect and animated images."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from curate.config import FetchConfig
from curate.faults import INTERNAL_ERROR, describe
from curate.fetching.strip import ORIENTATION_TAG, MalformedImage, is_animated, normalize_orientation, strip_metadata
from curate.schema import OK

# We apply our own pixel cap (fetch.max_pixels) from the header, before any decode.
Image.MAX_IMAGE_PIXELS = None

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] in (b"BM",) or data[:4] in (b"II*\x00", b"MM\x00*"):
        return "other_image"
    return None


@dataclass
class Checked:
    reason: str
    data: bytes = b""
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    orientation: int | None = None
    sha256: str | None = None
    error: str | None = None


def check_image(data: bytes, cfg: FetchConfig) -> Checked:
    """The verdict on one download; never raises: a surprise is this image's `internal_error`, not the shard's."""
    try:
        return _check(data, cfg)
    except Exception as err:  # noqa: BLE001 - one image's surprise is that image's outcome, never the shard's
        return Checked(INTERNAL_ERROR, format=sniff(data), error=describe(err))


# What Pillow and the strippers raise for data they cannot make sense of: the image is corrupt, not our code.
_MALFORMED = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error)
_ADDRESS = re.compile(r" <[^<>]* at 0x[0-9a-fA-F]+>")


def _check(data: bytes, cfg: FetchConfig) -> Checked:
    fmt = sniff(data)
    if fmt is None:
        return Checked("not_an_image", error=f"starts with {data[:12]!r}")
    if fmt not in cfg.allowed_formats:
        return Checked("unsupported_format", format=fmt, error=f"{fmt} not in fetch.allowed_formats")
    if fmt not in EXTENSIONS:
        # Only the formats we have a metadata stripper (and a tar extension) for can be released.
        return Checked("unsupported_format", format=fmt, error=f"{fmt}: no metadata stripper")
    try:
        if is_animated(data, fmt):
            return Checked("unsupported_format", format=fmt, error=f"animated {fmt}")
        orientation = _orientation(data)
        # Every check below looks at the bytes we release, so what was decoded is what ships.
        clean = strip_metadata(data, fmt, orientation) if cfg.strip_metadata else data
    except MalformedImage as err:
        return Checked("corrupt", format=fmt, error=f"metadata strip: {str(err)[:200]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(clean))
            width, height = image.size
            found = Checked(OK, format=fmt, width=width, height=height, mode=image.mode, orientation=orientation)
            if width * height > cfg.max_pixels:
                found.reason, found.error = "decompression_bomb", f"{width}x{height} > fetch.max_pixels"
                return found
            if min(width, height) < cfg.min_side:
                found.reason, found.error = "too_small", f"{width}x{height}"
                return found
            if max(width, height) / max(min(width, height), 1) > cfg.max_aspect_ratio:
                found.reason, found.error = "extreme_aspect", f"{width}x{height}"
                return found
            scaled = fmt == "jpeg" and not cfg.full_decode
            if scaled:
                # libjpeg still entropy-decodes every block (truncated or damaged streams fail the same way),
                # but reconstructs pixels at 1/8 scale: half the CPU of fetch's check on PASS-sized images.
                image.draft(None, (max(width // 8, 1), max(height // 8, 1)))
            image.load()  # the decode: truncated or damaged data fails here
            extrema = image.getextrema()
            if scaled and _uniform(extrema, found.mode):
                # A block-average view can hide fine detail: confirm "single colour" at full resolution.
                full = Image.open(io.BytesIO(clean))
                full.load()
                extrema = full.getextrema()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Checked("decompression_bomb", format=fmt, error=str(err)[:200])
    except _MALFORMED as err:
        # Pillow names the in-memory file by its address: dropped, so the same bytes give the same manifest.
        message = _ADDRESS.sub("", str(err))[:200]
        return Checked("corrupt", format=fmt, error=f"{type(err).__name__}: {message}")
    if _uniform(extrema, found.mode):
        found.reason, found.error = "single_colour", None
        return found
    found.data = clean
    found.sha256 = hashlib.sha256(clean).hexdigest()
    return found


def _orientation(data: bytes) -> int:
    """The source's EXIF orientation, 1..8; 1 when it is missing, out of range, of a strange type or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return normalize_orientation(image.getexif().get(ORIENTATION_TAG))
    except Exception:  # noqa: BLE001 - a broken EXIF costs only the orientation: it is dropped with the rest
        return 1


def _uniform(extrema: Any, mode: str | None) -> bool:
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    # Alpha does not make an image any less blank: look at the colour bands only.
    colour_bands = bands[:3] if mode in ("RGBA", "LA", "PA") else bands
    return all(low == high for low, high in colour_bands)

"""Release only the primary image, without its personal metadata, and without re-encoding its pixels.

GPS positions, camera serials, owner names and edit histories sit in EXIF (with its thumbnail), XMP, IPTC,
comments, text chunks, and in whatever a camera or an editor appended after the image: a second JPEG, the
further frames of an MPO, a trailer. Each stripper walks the container's structure and copies only what the
decoder needs to show the primary image as it was: the coded pixel data byte for byte, the tables, the colour
information (ICC profile, the Adobe marker that tells how to read CMYK JPEGs, PNG gamma/chroma/sRGB). Everything
else is dropped, including everything after the end of the primary image. An allowlist, not a blocklist: a
metadata kind we have never heard of is dropped too.

The EXIF orientation is the one tag kept, as a minimal EXIF block holding only that tag, so the image still
displays upright. A value outside 1..8 means nothing to a viewer and is treated as 1 (no EXIF written).

A structure we cannot walk raises `MalformedImage` (a `ValueError`): the fetch check records the image as
`corrupt`. Truncated data is kept up to its end: the decode that follows rejects it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from numbers import Integral

ORIENTATION_TAG = 0x0112


class MalformedImage(ValueError):
    """The container's structure cannot be walked, so we cannot say which bytes are safe to release."""


def normalize_orientation(value: object) -> int:
    """An EXIF orientation as a viewer reads it: 1..8, and 1 for anything else (missing, huge, wrong type).

    Pillow returns the tag as the file stored it: a SHORT or a LONG of any size, a tuple when the count is not 1,
    bytes or text for the wrong type. Only a whole number in 1..8 has a meaning.
    """
    if isinstance(value, tuple | list) and len(value) >= 1:
        value = value[0]
    if isinstance(value, Integral) and not isinstance(value, bool) and 1 <= int(value) <= 8:
        return int(value)
    return 1


def _orientation_tiff(orientation: int) -> bytes:
    """A little-endian TIFF header and one IFD holding only the Orientation tag (SHORT, count 1)."""
    entry = struct.pack("<HHIHH", ORIENTATION_TAG, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)


def orientation_exif(orientation: object) -> bytes:
    """A JPEG APP1 segment holding only the orientation; empty when the orientation is 1 (nothing to say)."""
    value = normalize_orientation(orientation)
    if value == 1:
        return b""
    payload = b"Exif\x00\x00" + _orientation_tiff(value)
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


# ---------------------------------------------------------------------------------------------------- JPEG

_SOI, _EOI, _SOS, _APP0, _APP2, _APP14, _COM = 0xD8, 0xD9, 0xDA, 0xE0, 0xE2, 0xEE, 0xFE
# Markers that carry no length: TEM and the restart markers (a stray RSTn between segments is harmless).
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# Segments the decoder needs, kept verbatim: frame headers (SOFn), Huffman and arithmetic tables, quantisation
# tables, restart interval, DNL, and the hierarchical-mode DHP/EXP.
_TABLES = ({*range(0xC0, 0xD0)} - {0xC8}) | {0xDB, 0xDC, 0xDD, 0xDE, 0xDF}
_APPS = set(range(0xE0, 0xF0))


def _jfif_without_thumbnail(segment: bytes) -> bytes | None:
    """The JFIF APP0 header with its thumbnail dimensions zeroed (a thumbnail can show what a crop removed)."""
    payload = segment[4:]
    if not payload.startswith(b"JFIF\x00") or len(payload) < 14:
        return None  # libjpeg ignores a short JFIF header too, so dropping it changes nothing it decodes
    header = payload[:12] + b"\x00\x00"
    return b"\xff\xe0" + struct.pack(">H", len(header) + 2) + header


def _kept_segment(marker: int, segment: bytes) -> bytes | None:
    """The bytes to release for one length-carrying segment, or None to drop it."""
    if marker in _TABLES or marker == _SOS:
        return segment
    payload = segment[4:]
    if marker == _APP0:
        return _jfif_without_thumbnail(segment)  # JFXX (thumbnails only) and other APP0 kinds are dropped
    if marker == _APP2 and payload.startswith(b"ICC_PROFILE\x00"):
        return segment  # one chunk of the ICC profile; MPF and FlashPix APP2 segments are dropped
    if marker == _APP14 and payload.startswith(b"Adobe"):
        return segment  # the colour transform flag libjpeg needs for CMYK/YCCK and RGB JPEGs
    return None  # EXIF, XMP (and extended XMP), IPTC/Photoshop, comments, every other APPn


def _next_marker(data: bytes, pos: int) -> tuple[int, int] | None:
    """(marker, offset of its 0xFF) of the next marker at or after pos, or None at the end of the data.

    Bytes between segments that are not a marker are skipped, as Pillow's parser and libjpeg skip them.
    """
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes: the marker is the last 0xFF of the run
        if pos + 1 >= len(data):
            return None
        if data[pos + 1] == 0x00:
            pos += 2  # a stuffed zero outside a scan means nothing: decoders skip it
            continue
        return data[pos + 1], pos


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at pos ends: at the next marker's 0xFF, or at the end of the data.

    Inside a scan a 0xFF is followed by 0x00 (a stuffed data byte) or a restart marker, both part of the scan;
    a run of 0xFF is fill. Any other byte after a 0xFF makes a marker (a table, the next scan, EOI).
    """
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        follower = data[pos + 1]
        if follower == 0xFF:
            pos += 1
        elif follower == 0x00 or 0xD0 <= follower <= 0xD7:
            pos += 2
        else:
            return pos


def strip_jpeg(data: bytes, orientation: object = 1) -> bytes:
    """The primary JPEG image only: its tables, colour segments and scans, ending at its EOI."""
    if data[:2] != b"\xff\xd8":
        raise MalformedImage("not a JPEG (no SOI)")
    out = [b"\xff\xd8"]
    exif = orientation_exif(orientation)
    pos = 2
    while True:
        found = _next_marker(data, pos)
        if found is None:
            break  # no EOI: truncated; what there is stays, and the decode judges it
        marker, start = found
        if marker == _EOI:
            out.append(b"\xff\xd9")
            break  # the primary image ends here: a second JPEG, MPO frames or a trailer are all dropped
        if marker in _STANDALONE:
            out.append(data[start : start + 2])
            pos = start + 2
            continue
        if marker == _SOI:
            raise MalformedImage("second SOI before the first image's EOI")
        if marker not in _TABLES and marker not in _APPS and marker not in (_SOS, _COM):
            raise MalformedImage(f"unknown JPEG marker 0xFF{marker:02X} at {start}")
        if start + 4 > len(data):
            break  # truncated inside a segment's length
        length = struct.unpack(">H", data[start + 2 : start + 4])[0]
        if length < 2:
            raise MalformedImage(f"JPEG segment 0xFF{marker:02X} with length {length}")
        end = start + 2 + length
        if exif and marker != _APP0:
            out.append(exif)  # after JFIF, which must come first, and before everything else
            exif = b""
        kept = _kept_segment(marker, data[start:end])
        if kept is not None:
            out.append(kept)
        if end > len(data):
            break  # truncated inside the segment: a kept one stays as far as it goes, a dropped one goes
        pos = end
        if marker == _SOS:
            stop = _scan_end(data, pos)
            out.append(data[pos:stop])  # the entropy-coded data, untouched
            pos = stop
    return b"".join(out)


# ----------------------------------------------------------------------------------------------------- PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks the decoder needs, and the colour information that changes how the pixels look. The rest (eXIf,
# tEXt/zTXt/iTXt, tIME, the APNG frames, private chunks) is dropped.
_PNG_KEEP = {
    b"IHDR",
    b"PLTE",
    b"IDAT",
    b"IEND",
    b"tRNS",
    b"gAMA",
    b"cHRM",
    b"sRGB",
    b"iCCP",
    b"sBIT",
    b"cICP",
    b"mDCV",
    b"mDCv",
    b"cLLI",
    b"cLLi",
    b"bKGD",
    b"pHYs",
}


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each chunk after the signature, up to IEND; the last may end past the data."""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        if length > 0x7FFFFFFF:
            raise MalformedImage(f"PNG chunk length {length} at {pos}")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        yield kind, pos, end
        if kind == b"IEND" or end > len(data):
            return
        pos = end


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def strip_png(data: bytes, orientation: object = 1) -> bytes:
    """The PNG's image and colour chunks, each with a checked CRC, ending at IEND."""
    if data[:8] != _PNG_SIGNATURE:
        raise MalformedImage("not a PNG (no signature)")
    out = [_PNG_SIGNATURE]
    value = normalize_orientation(orientation)
    exif = _png_chunk(b"eXIf", _orientation_tiff(value)) if value != 1 else b""
    for kind, start, end in _png_chunks(data):
        if kind not in _PNG_KEEP:
            continue
        chunk = data[start:end]
        if end <= len(data) and zlib.crc32(chunk[4:-4]) & 0xFFFFFFFF != struct.unpack(">I", chunk[-4:])[0]:
            # A damaged chunk could be damaged anywhere, its length included: we cannot vouch for what follows.
            raise MalformedImage(f"bad CRC in PNG chunk {kind!r} at {start}")
        if kind == b"IDAT" and exif:
            out.append(exif)  # eXIf must precede the image data
            exif = b""
        out.append(chunk)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------------- WebP

# Top-level chunks kept: the extended header, colour profile, animation header and frames, alpha, and the coded
# image. EXIF, XMP and unknown chunks are dropped.
_WEBP_KEEP = {b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"}
_VP8X_ANIMATION, _VP8X_XMP, _VP8X_EXIF = 0x02, 0x04, 0x08


def _webp_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each top-level chunk inside the RIFF size; bytes after the RIFF are not the file's."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedImage("not a WebP (no RIFF/WEBP header)")
    riff_end = min(8 + struct.unpack("<I", data[4:8])[0], len(data))
    pos = 12
    while pos + 8 <= riff_end:
        kind = data[pos : pos + 4]
        length = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = min(pos + 8 + length + (length & 1), riff_end)  # odd chunks are padded; a last pad may be missing
        yield kind, pos, end
        pos = end


def strip_webp(data: bytes, orientation: object = 1) -> bytes:
    """The WebP's image and colour chunks, with the VP8X flags saying what is left."""
    value = normalize_orientation(orientation)
    chunks = []
    extended = False
    for kind, start, end in _webp_chunks(data):
        if kind not in _WEBP_KEEP:
            continue
        chunk = data[start:end]
        if kind == b"VP8X":
            if len(chunk) < 18:
                raise MalformedImage("VP8X chunk shorter than 10 bytes")
            flags = chunk[8] & ~(_VP8X_EXIF | _VP8X_XMP) & 0xFF
            if value != 1:
                flags |= _VP8X_EXIF
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
            extended = True
        chunks.append(chunk)
    if extended and value != 1:
        # EXIF is allowed only in the extended format (VP8X) and comes after the image data.
        tiff = _orientation_tiff(value)
        chunks.append(b"EXIF" + struct.pack("<I", len(tiff)) + tiff + b"\x00" * (len(tiff) & 1))
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ------------------------------------------------------------------------------------------------- dispatch


def is_animated(data: bytes, fmt: str) -> bool:
    """An APNG or an animated WebP: more than one picture, which the strippers would not keep as one image."""
    if fmt == "png" and data[:8] == _PNG_SIGNATURE:
        for kind, _, _ in _png_chunks(data):
            if kind == b"acTL":
                return True
            if kind == b"IDAT":
                return False  # acTL must precede the image data
        return False
    if fmt == "webp" and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        for kind, start, end in _webp_chunks(data):
            if kind in (b"ANIM", b"ANMF"):
                return True
            if kind == b"VP8X" and end - start > 8 and data[start + 8] & _VP8X_ANIMATION:
                return True
        return False
    return False


def strip_metadata(data: bytes, fmt: str, orientation: object = 1) -> bytes:
    if fmt == "jpeg":
        return strip_jpeg(data, orientation)
    if fmt == "png":
        return strip_png(data, orientation)
    if fmt == "webp":
        return strip_webp(data, orientation)
    raise MalformedImage(f"no metadata stripper for {fmt}")


def png_crc_ok(data: bytes) -> bool:
    """Used by tests: every chunk of a rewritten PNG still carries a valid CRC."""
    for _, start, end in _png_chunks(data):
        chunk = data[start:end]
        if end > len(data) or zlib.crc32(chunk[4:-4]) & 0xFFFFFFFF != struct.unpack(">I", chunk[-4:])[0]:
            return False
    return True

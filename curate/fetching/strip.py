"""Remove EXIF/XMP/IPTC/comments from image bytes without re-encoding the pixels.

GPS positions and camera serials are personal data. Colour information (ICC profiles, the Adobe marker that
tells how to read CMYK JPEGs, PNG gamma/chroma) is kept, and so is the EXIF orientation, as a minimal EXIF
block holding that one tag, so the image still displays upright.
"""

from __future__ import annotations

import struct
import zlib

# JPEG APPn segments kept: APP0 JFIF, APP2 ICC profile, APP14 Adobe (colour transform for CMYK/YCCK).
_JPEG_KEEP_APP = {0xE0, 0xE2, 0xEE}
_PNG_DROP = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def orientation_exif(orientation: int) -> bytes:
    """A JPEG APP1 segment with a little-endian TIFF IFD holding only the Orientation tag."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def strip_jpeg(data: bytes, orientation: int = 1) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out = [b"\xff\xd8"]
    pos = 2
    inserted = orientation == 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("bad JPEG marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan: the rest is entropy-coded data
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment = data[pos : pos + 2 + length]
        is_app = 0xE0 <= marker <= 0xEF
        if not inserted and marker != 0xE0:
            out.append(orientation_exif(orientation))
            inserted = True
        if not (is_app and marker not in _JPEG_KEEP_APP) and marker != 0xFE:  # 0xFE = comment
            out.append(segment)
        pos += 2 + length
    out.append(data[pos:])
    return b"".join(out)


def strip_png(data: bytes) -> bytes:
    out = [data[:8]]
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind not in _PNG_DROP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_webp(data: bytes) -> bytes:
    chunks = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        length = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + length + (length & 1)
        chunk = data[pos:end]
        if kind == b"VP8X":
            flags = chunk[8] & ~0x0C & 0xFF  # clear the EXIF (0x08) and XMP (0x04) bits
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind not in (b"EXIF", b"XMP "):
            chunks.append(chunk)
        pos = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def strip_metadata(data: bytes, fmt: str, orientation: int = 1) -> bytes:
    if fmt == "jpeg":
        return strip_jpeg(data, orientation)
    if fmt == "png":
        return strip_png(data)
    if fmt == "webp":
        return strip_webp(data)
    return data


def png_crc_ok(data: bytes) -> bool:
    """Used by tests: every chunk of a rewritten PNG still carries a valid CRC."""
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        body = data[pos + 4 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        if zlib.crc32(body) & 0xFFFFFFFF != crc:
            return False
        pos += 12 + length
    return True

"""A corpus of odd image files, generated in memory, each with the fetch reason `check_image` must give it.

`torture_files()` returns name -> (bytes, expected fetch reason under `FetchConfig()`'s defaults). Nothing here
is a committed binary: every file is built from `conftest.photo` pictures, Pillow's encoders, and the small
container writers below (a TIFF/EXIF writer, JPEG segment and PNG chunk splicers), so each oddity is exactly
the one named.

Every file expected "ok" is released, and carries personal metadata the release must not: at least one of
`SECRETS` appears in its plain bytes (EXIF text, XMP, IPTC, comments, text chunks, a second frame, a trailer).
`ORIENTATIONS` gives the orientation each ok file must keep (1 when not listed).
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from conftest import encode, photo
from PIL import Image, ImageCms, PngImagePlugin

OK = "ok"
CAMERA = b"SecretCam"  # the camera make, model or serial number
PLACE = b"SecretPlace"  # a GPS area name, a city, a caption naming where
OWNER = b"SecretOwner"  # an author, by-line or copyright holder
SECRETS = (CAMERA, PLACE, OWNER)
ORIENTATIONS = {
    "jpeg_orientation_6_gps": 6,
    "jpeg_progressive_exif": 8,
    "png_exif_orientation_3_icc": 3,
    "png_exif_text_time_private_after_iend": 3,
}

# ----------------------------------------------------------------------------------------- a TIFF/EXIF writer

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 1, 2, 3, 4, 5, 7
Entry = tuple[int, int, Any]  # (tag, TIFF type, value: int, a sequence of them, (num, den) pairs, bytes or str)
EXIF_POINTER, GPS_POINTER, THUMB_OFFSET, THUMB_LENGTH = 0x8769, 0x8825, 0x0201, 0x0202


def _value_bytes(kind: int, value: Any) -> tuple[int, bytes]:
    """(count, little-endian bytes) of one entry's value."""
    if kind in (ASCII, UNDEFINED):
        raw = value.encode() if isinstance(value, str) else bytes(value)
        raw += b"\x00" if kind == ASCII else b""
        return len(raw), raw
    items = list(value) if isinstance(value, Sequence) else [value]
    if kind == RATIONAL:
        return len(items), b"".join(struct.pack("<II", num, den) for num, den in items)
    code = {BYTE: "B", SHORT: "H", LONG: "I"}[kind]
    return len(items), b"".join(struct.pack("<" + code, item) for item in items)


def _ifd_size(entries: list[Entry]) -> int:
    overflow = sum(len(raw) + (len(raw) & 1) for raw in (_value_bytes(k, v)[1] for _, k, v in entries) if len(raw) > 4)
    return 2 + 12 * len(entries) + 4 + overflow


def _ifd(entries: list[Entry], offset: int, next_ifd: int) -> bytes:
    """One IFD at `offset`, its out-of-line values straight after its table, entries in tag order."""
    entries = sorted(entries, key=lambda entry: entry[0])
    data_at = offset + 2 + 12 * len(entries) + 4
    table, data = [struct.pack("<H", len(entries))], []
    for tag, kind, value in entries:
        count, raw = _value_bytes(kind, value)
        if len(raw) <= 4:
            table.append(struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\x00"))
        else:
            table.append(struct.pack("<HHII", tag, kind, count, data_at))
            raw += b"\x00" * (len(raw) & 1)  # values start on a word boundary
            data.append(raw)
            data_at += len(raw)
    table.append(struct.pack("<I", next_ifd))
    return b"".join(table + data)


def tiff(
    ifd0: list[Entry],
    exif: list[Entry] | None = None,
    gps: list[Entry] | None = None,
    ifd1: list[Entry] | None = None,
    thumbnail: bytes = b"",
) -> bytes:
    """A little-endian TIFF (EXIF) structure: IFD0 with optional Exif and GPS sub-IFDs, IFD1 with a thumbnail."""
    ifd0 = list(ifd0) + [(EXIF_POINTER, LONG, 0)] * bool(exif) + [(GPS_POINTER, LONG, 0)] * bool(gps)
    ifd1 = list(ifd1 or []) + [(THUMB_OFFSET, LONG, 0), (THUMB_LENGTH, LONG, len(thumbnail))] * bool(thumbnail)
    # Pointer values do not change any size: lay the blocks out with zeros, then write them with the offsets.
    at_exif = 8 + _ifd_size(ifd0)
    at_gps = at_exif + (_ifd_size(exif) if exif else 0)
    at_ifd1 = at_gps + (_ifd_size(gps) if gps else 0)
    at_thumb = at_ifd1 + (_ifd_size(ifd1) if ifd1 else 0)

    def point(entries: list[Entry], targets: dict[int, int]) -> list[Entry]:
        return [(tag, kind, targets.get(tag, value)) for tag, kind, value in entries]

    out = [b"II*\x00" + struct.pack("<I", 8)]
    out.append(_ifd(point(ifd0, {EXIF_POINTER: at_exif, GPS_POINTER: at_gps}), 8, at_ifd1 if ifd1 else 0))
    if exif:
        out.append(_ifd(exif, at_exif, 0))
    if gps:
        out.append(_ifd(gps, at_gps, 0))
    if ifd1:
        out.append(_ifd(point(ifd1, {THUMB_OFFSET: at_thumb}), at_ifd1, 0))
    return b"".join(out) + thumbnail


def gps_ifd() -> list[Entry]:
    """A position, and the place's name as text (GPSAreaInformation), so its removal is visible in the bytes."""
    return [
        (0x0000, BYTE, [2, 3, 0, 0]),
        (0x0001, ASCII, "N"),
        (0x0002, RATIONAL, [(51, 1), (30, 1), (1234, 100)]),
        (0x0003, ASCII, "W"),
        (0x0004, RATIONAL, [(0, 1), (7, 1), (3900, 100)]),
        (0x001C, UNDEFINED, b"ASCII\x00\x00\x00" + PLACE),
    ]


def camera_ifd0(*extra: Entry) -> list[Entry]:
    return [(0x010F, ASCII, CAMERA.decode()), (0x0110, ASCII, "Model " + CAMERA.decode()), *extra]


# ------------------------------------------------------------------------------------ JPEG segment splicing


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def app1_exif(tiff_bytes: bytes) -> bytes:
    return segment(0xE1, b"Exif\x00\x00" + tiff_bytes)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each header segment up to and including the first SOS header."""
    found, pos = [], 2
    while True:
        marker = data[pos + 1]
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        found.append((marker, pos, end))
        if marker == 0xDA:
            return found
        pos = end


def with_segments(data: bytes, *segments: bytes, before: int | None = None) -> bytes:
    """Insert segments after SOI and the APP0 that Pillow writes first, or before the first `before` marker."""
    spots = jpeg_segments(data)
    if before is None:
        at = spots[0][2] if spots[0][0] == 0xE0 else 2
    else:
        at = next(start for marker, start, _ in spots if marker == before)
    return data[:at] + b"".join(segments) + data[at:]


def before_nth_sos(data: bytes, n: int, insert: bytes) -> bytes:
    """Insert bytes before the n-th SOS marker (n >= 1) of a (progressive) JPEG."""
    at = -1
    for _ in range(n + 1):
        at = data.index(b"\xff\xda", at + 1)
    return data[:at] + insert + data[at:]


def set_sof_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header's dimensions (the pixels then no longer match: for header-only checks)."""
    start = next(start for marker, start, _ in jpeg_segments(data) if 0xC0 <= marker <= 0xC2)
    return data[: start + 5] + struct.pack(">HH", height, width) + data[start + 9 :]


def xmp_packet(extra: str = "") -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
        ' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
        f' exif:GPSLatitude="51,30.2N" exif:GPSLongitude="0,7.65W" tiff:Make="{CAMERA.decode()}"{extra}>'
        f"<dc:creator><rdf:Seq><rdf:li>{OWNER.decode()}</rdf:li></rdf:Seq></dc:creator>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def xmp_segment(packet: bytes) -> bytes:
    return segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def extended_xmp_segments() -> list[bytes]:
    """The main XMP pointing to an extended XMP (its GUID is the MD5 of the extension), and the extension."""
    extension = xmp_packet().replace(b"exif:GPSLatitude", b'exif:GPSAltitude="12/1" exif:GPSDestLatitude')
    guid = hashlib.md5(extension).hexdigest().upper().encode()
    main = xmp_packet(f' xmpNote:HasExtendedXMP="{guid.decode()}"')
    chunk = b"http://ns.adobe.com/xmp/extension/\x00" + guid + struct.pack(">II", len(extension), 0) + extension
    return [xmp_segment(main), segment(0xE1, chunk)]


def iptc_segment() -> bytes:
    """A Photoshop APP13 with an IPTC-NAA resource (8BIM 0x0404): by-line, city, caption."""

    def dataset(number: int, text: bytes) -> bytes:
        return b"\x1c\x02" + bytes([number]) + struct.pack(">H", len(text)) + text

    iptc = dataset(0, b"\x00\x04") + dataset(80, OWNER) + dataset(90, PLACE) + dataset(120, b"At home in " + PLACE)
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    resource += b"\x00" * (len(iptc) & 1)
    return segment(0xED, b"Photoshop 3.0\x00" + resource)


def mpo(first: bytes, second: bytes) -> bytes:
    """A multi-picture file as phones write it: the first JPEG gains an APP2 MPF index; the second follows its EOI."""

    # The MP index: version, the number of images, and one 16-byte entry per image (attributes, size, offset
    # from the MP header, dependent images). Its size is fixed, so the APP2's size is known before the offsets.
    def index(first_size: int, offset_of_second: int) -> bytes:
        entries = struct.pack("<IIIHH", 0x030000, first_size, 0, 0, 0)
        entries += struct.pack("<IIIHH", 0x010002, len(second), offset_of_second, 0, 0)
        body = tiff([(0xB000, UNDEFINED, b"0100"), (0xB001, LONG, 2), (0xB002, UNDEFINED, entries)])
        return segment(0xE2, b"MPF\x00" + body)

    size = len(first) + len(index(0, 0))
    at = jpeg_segments(first)[0][2]  # after APP0
    header_at = at + 8  # the MP header (the TIFF "II*") starts after FF E2, the length and "MPF\0"
    segment_bytes = index(size, size - header_at)
    return first[:at] + segment_bytes + first[at:] + second


# --------------------------------------------------------------------------------------- PNG chunk splicing


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    found, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        found.append((data[pos + 4 : pos + 8], pos, pos + 12 + length))
        pos += 12 + length
    return found


def png_insert(data: bytes, *chunks: bytes, before: bytes = b"IDAT") -> bytes:
    at = next(start for kind, start, _ in png_chunks(data) if kind == before)
    return data[:at] + b"".join(chunks) + data[at:]


def raw_png(width: int, height: int, depth: int, colour: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: IHDR, one IDAT of the given (unfiltered) rows, IEND. No rows: a header-only file."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(rows)) if rows is not None else chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + header + idat + chunk(b"IEND", b"")


def png_16bit_rgb(width: int = 160, height: int = 120) -> bytes:
    # 8-bit picture spread over 16 bits, plus low-bit noise: detail a downscale to 8 bits would hide
    low = np.random.default_rng(5).integers(0, 256, size=(height, width, 3))
    pixels = (np.asarray(photo(width, height, seed=5), dtype=np.int64) * 256 + low).astype(">u2")
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter type 0 per row
    return raw_png(width, height, 16, 2, rows)


# --------------------------------------------------------------------------------------------- the corpus


def srgb_icc() -> bytes:
    """Little CMS's sRGB profile, its creation time fixed so that the corpus is the same bytes on every run."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    return bytes(profile)


def huge_icc(size: int = 200_000) -> bytes:
    """A real sRGB profile padded past one APP2's capacity, so the JPEG holds it in several chunks."""
    profile = bytearray(srgb_icc().ljust(size, b"\x00"))
    profile[:4] = struct.pack(">I", size)  # the header's size field covers the padding
    return bytes(profile)


def jpeg(seed: int, width: int = 320, height: int = 240, mode: str = "RGB", **params: object) -> bytes:
    return encode(photo(width, height, seed=seed, mode=mode), "JPEG", quality=90, **params)


def gps_exif(*ifd0: Entry, thumbnail: bytes = b"") -> bytes:
    ifd1: list[Entry] | None = [(0x0103, SHORT, 6)] if thumbnail else None
    exif_ifd: list[Entry] = [(0x9003, ASCII, "2012:02:16 09:56:37"), (0xA431, ASCII, "SN-" + CAMERA.decode())]
    return app1_exif(tiff(camera_ifd0(*ifd0), exif=exif_ifd, gps=gps_ifd(), ifd1=ifd1, thumbnail=thumbnail))


def _jpegs() -> dict[str, tuple[bytes, str]]:
    base = jpeg(1)
    thumb = encode(photo(80, 60, seed=99), "JPEG", quality=70)
    progressive = jpeg(4, progressive=True)
    second = with_segments(jpeg(2, 160, 120), gps_exif())
    files = {
        # Rejected before any metadata is touched.
        "jpeg_truncated_half": (base[: len(base) // 2], "corrupt"),
        "jpeg_header_only": (base[: jpeg_segments(base)[-1][2]], "corrupt"),
        "jpeg_missing_eoi": (with_segments(base, gps_exif())[:-2], "corrupt"),
        "jpeg_sof_claims_huge": (set_sof_size(base, 60000, 60000), "decompression_bomb"),
        "jpeg_tiny_32px": (jpeg(5, 32, 32), "too_small"),
        "jpeg_extreme_aspect": (jpeg(6, 640, 64), "extreme_aspect"),
        "jpeg_single_colour": (encode(Image.new("RGB", (128, 128), (9, 99, 199)), "JPEG"), "single_colour"),
        "jpeg_reserved_marker": (with_segments(base, segment(0x4A, b"\x00\x00")), "corrupt"),
        "jpeg_second_soi_in_header": (with_segments(base, b"\xff\xd8"), "corrupt"),
        "jpeg_app1_runs_past_end": (with_segments(base, b"\xff\xe1\xff\xf0Exif\x00\x00")[:400], "corrupt"),
        "jpeg_magic_then_garbage": (b"\xff\xd8\xff" + bytes(range(256)) * 8, "corrupt"),
        # Released, without what they carry.
        "jpeg_garbage_after_eoi": (base + b"trailer " + CAMERA + b" " + PLACE * 50, OK),
        "jpeg_appended_jpeg_with_gps": (base + second, OK),
        "mpo_gps_in_second_frame": (mpo(base, second), OK),
        "jpeg_huge_exif_60kb": (
            with_segments(base, app1_exif(tiff(camera_ifd0(), exif=[(0x927C, UNDEFINED, CAMERA * 6600)]))),
            OK,
        ),
        "jpeg_orientation_long_70000": (with_segments(base, app1_exif(tiff(camera_ifd0((0x0112, LONG, 70000))))), OK),
        "jpeg_orientation_short_9": (with_segments(base, app1_exif(tiff(camera_ifd0((0x0112, SHORT, 9))))), OK),
        "jpeg_orientation_ascii": (with_segments(base, app1_exif(tiff(camera_ifd0((0x0112, ASCII, "6"))))), OK),
        "jpeg_orientation_6_gps": (with_segments(base, gps_exif((0x0112, SHORT, 6))), OK),
        "jpeg_exif_gps_thumbnail": (with_segments(base, gps_exif(thumbnail=thumb)), OK),
        "jpeg_exif_damaged_ifd": (with_segments(base, app1_exif(b"II*\x00\xff\xff\x00\x00" + CAMERA)), OK),
        "jpeg_xmp_gps": (with_segments(base, xmp_segment(xmp_packet())), OK),
        "jpeg_extended_xmp": (with_segments(base, *extended_xmp_segments()), OK),
        "jpeg_iptc_app13": (with_segments(base, iptc_segment()), OK),
        "jpeg_comment": (with_segments(base, segment(0xFE, b"shot at " + PLACE + b" by " + OWNER)), OK),
        "jpeg_jfif_thumbnail_and_jfxx": (
            with_segments(
                base[:2] + segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x02\x02" + b"\x80" * 12) + base[20:],
                segment(0xE0, b"JFXX\x00\x10" + thumb),
                segment(0xE3, b"Meta\x00" + CAMERA),
            ),
            OK,
        ),
        "jpeg_progressive_exif": (
            before_nth_sos(
                with_segments(progressive, gps_exif((0x0112, SHORT, 8)), segment(0xFE, OWNER)),
                3,
                segment(0xFE, b"between scans " + PLACE) + xmp_segment(xmp_packet()),
            ),
            OK,
        ),
        "jpeg_restart_markers": (with_segments(jpeg(7, restart_marker_blocks=3), gps_exif()), OK),
        "jpeg_fill_bytes_and_junk": (
            with_segments(base, gps_exif(), b"junk " + OWNER, b"\xff\xff\xff") + b"\xff\xfe\x00\x04ok",
            OK,
        ),
        "jpeg_cmyk_adobe": (with_segments(jpeg(8, mode="CMYK"), gps_exif(), before=0xEE), OK),
        "jpeg_grey": (with_segments(jpeg(9, mode="L"), gps_exif()), OK),
        "jpeg_icc_and_mpf_without_frames": (
            with_segments(
                jpeg(10, icc_profile=srgb_icc()),
                segment(0xE2, b"MPF\x00II*\x00" + CAMERA),
                segment(0xE2, b"FPXR\x00" + OWNER),
                before=0xDB,
            ),
            OK,
        ),
        "jpeg_huge_icc_chunks": (with_segments(jpeg(11, icc_profile=huge_icc()), gps_exif(), before=0xDB), OK),
    }
    return files


def _pngs() -> dict[str, tuple[bytes, str]]:
    def text_info() -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_text("Location", PLACE.decode())
        info.add_text("Author", OWNER.decode(), zip=True)
        info.add_itxt("XML:com.adobe.xmp", xmp_packet().decode())
        return info

    def png(image: Image.Image, **params: object) -> bytes:
        return encode(image, "PNG", pnginfo=text_info(), **params)

    exif = tiff(camera_ifd0((0x0112, SHORT, 3)), gps=gps_ifd())
    rgb = png(photo(seed=20), exif=b"Exif\x00\x00" + exif)
    spliced = png_insert(
        rgb,
        chunk(b"tIME", b"\x07\xdc\x02\x10\x09\x38\x25"),
        chunk(b"prVt", CAMERA),
        chunk(b"sPLT", OWNER + b"\x00\x08"),
    )
    after_iend = chunk(b"tEXt", b"Comment\x00" + CAMERA) + encode(photo(64, 64, seed=21), "PNG")
    bad_text_crc = bytearray(chunk(b"tEXt", b"GPS\x00" + PLACE))
    bad_text_crc[-1] ^= 0xFF
    bad_idat_crc = bytearray(encode(photo(seed=22), "PNG"))
    idat_end = next(end for kind, _, end in png_chunks(bytes(bad_idat_crc)) if kind == b"IDAT")
    bad_idat_crc[idat_end - 1] ^= 0xFF
    apng = io.BytesIO()
    photo(seed=23).save(apng, "PNG", save_all=True, append_images=[photo(seed=24)], duration=100)
    grey16 = Image.fromarray(np.asarray(photo(seed=25).convert("L"), dtype=np.uint16) * 257)
    one_colour = Image.new("RGB", (100, 100), (1, 2, 3))
    return {
        "png_signature_only": (b"\x89PNG\r\n\x1a\n", "corrupt"),
        "png_truncated": (rgb[: len(rgb) * 2 // 3], "corrupt"),
        "png_bad_idat_crc": (bytes(bad_idat_crc), "corrupt"),
        "png_header_claims_100000px": (raw_png(100_000, 100_000, 8, 2), "decompression_bomb"),
        "png_1x1": (png(Image.new("RGB", (1, 1), (200, 10, 10))), "too_small"),
        "png_single_colour": (png(one_colour), "single_colour"),
        "png_animated": (apng.getvalue(), "unsupported_format"),
        "png_exif_text_time_private_after_iend": (spliced + after_iend, OK),
        "png_exif_orientation_3_icc": (png(photo(seed=26), exif=b"Exif\x00\x00" + exif, icc_profile=srgb_icc()), OK),
        "png_bad_crc_in_dropped_text": (png_insert(png(photo(seed=32)), bytes(bad_text_crc)), OK),
        "png_16bit_rgb": (png_insert(png_16bit_rgb(), chunk(b"tEXt", b"Make\x00" + CAMERA)), OK),
        "png_16bit_grey": (png(grey16), OK),
        "png_palette": (png(photo(seed=27).convert("P")), OK),
        "png_palette_transparency": (png(photo(seed=28).convert("P"), transparency=3), OK),
        "png_grey": (png(photo(seed=29, mode="L")), OK),
        "png_grey_alpha": (png(photo(seed=30, mode="LA")), OK),
        "png_rgba": (png(photo(seed=31, mode="RGBA")), OK),
    }


def _webps() -> dict[str, tuple[bytes, str]]:
    exif = b"Exif\x00\x00" + tiff(camera_ifd0(), gps=gps_ifd())
    lossy = encode(photo(seed=40), "WEBP", quality=80, exif=exif, xmp=xmp_packet())
    animated = io.BytesIO()
    photo(seed=41).save(animated, "WEBP", save_all=True, append_images=[photo(seed=42)], duration=100, quality=80)
    return {
        "webp_truncated": (lossy[: len(lossy) // 2], "corrupt"),
        "webp_animated": (animated.getvalue(), "unsupported_format"),
        "webp_exif_xmp": (lossy, OK),
        "webp_lossless_exif_icc": (
            encode(photo(seed=43), "WEBP", lossless=True, exif=exif, icc_profile=srgb_icc()),
            OK,
        ),
        "webp_data_after_riff": (lossy + b"RIFF-trailer " + CAMERA + PLACE, OK),
    }


def _others() -> dict[str, tuple[bytes, str]]:
    frames = [photo(96, 96, seed=50 + i).convert("P") for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return {
        "zero_bytes": (b"", "not_an_image"),
        "html_named_jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_an_image"),
        "svg_text": (b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><rect/></svg>', "not_an_image"),
        "riff_wave_not_webp": (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32, "not_an_image"),
        "gif_static": (encode(frames[0], "GIF"), "unsupported_format"),
        "gif_animated": (animated.getvalue(), "unsupported_format"),
        "tiff": (encode(photo(seed=55), "TIFF"), "unsupported_format"),
        "bmp": (encode(photo(seed=56), "BMP"), "unsupported_format"),
    }


@functools.cache
def _corpus() -> tuple[tuple[str, bytes, str], ...]:
    builders: list[Callable[[], dict[str, tuple[bytes, str]]]] = [_jpegs, _pngs, _webps, _others]
    return tuple((name, data, reason) for build in builders for name, (data, reason) in build().items())


def torture_files() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the fetch reason `check_image(data, FetchConfig())` must give)."""
    return {name: (data, reason) for name, data, reason in _corpus()}

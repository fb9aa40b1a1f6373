"""Metadata removal rewrites containers, never pixels, and releases the primary image only."""

from __future__ import annotations

import io
import struct
from dataclasses import replace

import pytest
from conftest import encode, photo
from PIL import Image, PngImagePlugin

from curate.config import FetchConfig
from curate.fetching.imagecheck import check_image
from curate.fetching.strip import (
    MalformedImage,
    is_animated,
    normalize_orientation,
    orientation_exif,
    png_crc_ok,
    strip_jpeg,
    strip_metadata,
    strip_png,
    strip_webp,
)


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def test_jpeg_keeps_icc_and_orientation_drops_exif_and_comments() -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    exif[0x0131] = "EditorSoftware"
    image = photo(seed=11)
    icc = b"\x00" * 128  # any bytes: only their survival is checked
    data = encode(image, "JPEG", exif=exif, icc_profile=icc, comment=b"shot at home")
    out = strip_jpeg(data, orientation=3)
    assert b"EditorSoftware" not in out and b"shot at home" not in out
    stored = Image.open(io.BytesIO(out))
    assert stored.getexif().get(0x0112) == 3 and 0x0131 not in stored.getexif()
    assert stored.info.get("icc_profile") == icc
    assert stored.tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_jpeg_without_rotation_gets_no_exif_at_all() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    out = strip_jpeg(encode(photo(seed=12), "JPEG", exif=exif), orientation=1)
    assert b"Exif" not in out


def test_png_text_chunks_removed_and_crcs_valid() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Location", "51.5N 0.1W")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>gps</x:xmpmeta>")
    data = encode(photo(seed=13).convert("RGBA"), "PNG", pnginfo=info)
    out = strip_png(data)
    assert b"51.5N" not in out and b"xmpmeta" not in out
    assert png_crc_ok(out)
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_webp_exif_removed() -> None:
    exif = Image.Exif()
    exif[0x010F] = "WebCam"
    data = encode(photo(seed=14), "WEBP", exif=exif, quality=80)
    assert b"WebCam" in data
    out = strip_webp(data)
    assert b"WebCam" not in out
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_orientation_of_any_type_or_size_becomes_1_to_8() -> None:
    # Pairs, not a dict: 6.0 == 6 and True == 1 would collide as keys.
    cases = [(6, 6), (8, 8), (1, 1), (0, 1), (9, 1), (70000, 1), (-3, 1), ((6,), 6), ((3, 0), 3), ((), 1)]
    cases += [("6", 1), (b"\x06", 1), (None, 1), (True, 1), (6.0, 1)]
    for value, expected in cases:
        assert normalize_orientation(value) == expected, value
    assert orientation_exif(70000) == b"" == orientation_exif(1)  # used to raise struct.error
    assert strip_jpeg(encode(photo(seed=15), "JPEG"), orientation=70000).count(b"Exif") == 0


def scan_jpeg(scan: bytes) -> bytes:
    """A hand-made JPEG whose only scan's entropy data is `scan`: the bytes are walked, never decoded."""
    sof = segment(0xC0, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00")
    sos = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    return b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64) + sof + sos + scan


def test_scan_walk_keeps_stuffing_restarts_and_fill_and_stops_at_eoi() -> None:
    scan = b"\x12\xff\x00\x34\xff\xd0\x56\xff\xd7\x78\xff\xff"
    data = scan_jpeg(scan) + b"\xff\xd9" + b"after the image: SecretCam \xff\xd8\xff\xe1"
    assert strip_jpeg(data) == scan_jpeg(scan) + b"\xff\xd9"


def test_metadata_between_scans_goes_and_tables_between_scans_stay() -> None:
    dht = segment(0xC4, b"\x00" + b"\x00" * 16)
    between = segment(0xFE, b"SecretCam") + dht + segment(0xE1, b"Exif\x00\x00SecretCam")
    second_scan = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x9a\xff\x00"
    data = scan_jpeg(b"\x12\x34") + between + second_scan + b"\xff\xd9"
    assert strip_jpeg(data) == scan_jpeg(b"\x12\x34") + dht + second_scan + b"\xff\xd9"


def test_jpeg_without_eoi_is_kept_to_its_end_and_nothing_is_invented() -> None:
    data = scan_jpeg(b"\x12\xff\x00\x34")
    assert strip_jpeg(data) == data


def test_malformed_jpeg_structures_raise_malformed_image() -> None:
    for damaged in (
        b"\x00\x00",
        scan_jpeg(b"\x12") + segment(0x4A, b""),
        b"\xff\xd8\xff\xd8",
        b"\xff\xd8\xff\xc4\x00\x01",
    ):
        with pytest.raises(MalformedImage):
            strip_jpeg(damaged)
    with pytest.raises(MalformedImage):
        strip_metadata(b"GIF89a", "gif")


def test_jfif_thumbnail_is_zeroed_and_jfxx_dropped() -> None:
    data = encode(photo(seed=16), "JPEG")
    jfif = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x01\x01" + b"\x42\x42\x42")
    spliced = data[:2] + jfif + segment(0xE0, b"JFXX\x00\x13thumb") + data[20:]
    assert strip_jpeg(spliced) == data  # Pillow's JFIF header carries no thumbnail: the same bytes again


def test_png_and_webp_keep_orientation_as_a_minimal_exif() -> None:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "SecretCam"
    png = strip_png(encode(photo(seed=17), "PNG", exif=exif), orientation=6)
    webp = strip_webp(encode(photo(seed=18), "WEBP", exif=exif, quality=80), orientation=6)
    for out in (png, webp):
        assert b"SecretCam" not in out
        stored = Image.open(io.BytesIO(out))
        assert dict(stored.getexif()) == {0x0112: 6}
    assert png_crc_ok(png) and png.index(b"eXIf") < png.index(b"IDAT")
    assert webp[20] & 0x0C == 0x08  # VP8X flags: EXIF yes, XMP no


def test_webp_flags_say_what_is_left_and_the_riff_size_is_right() -> None:
    data = encode(photo(seed=19), "WEBP", quality=80, exif=b"Exif\x00\x00II*\x00", xmp=b"<x:xmpmeta/>")
    assert data[20] & 0x0C == 0x0C
    out = strip_webp(data + b"trailing")
    assert out[20] & 0x0C == 0 and struct.unpack("<I", out[4:8])[0] == len(out) - 8
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_animation_is_detected_from_the_container() -> None:
    frames = [photo(seed=20), photo(seed=21)]
    apng, awebp = io.BytesIO(), io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:])
    frames[0].save(awebp, "WEBP", save_all=True, append_images=frames[1:])
    assert is_animated(apng.getvalue(), "png") and is_animated(awebp.getvalue(), "webp")
    assert not is_animated(encode(frames[0], "PNG"), "png") and not is_animated(encode(frames[0], "WEBP"), "webp")


def test_without_stripping_the_original_bytes_are_released() -> None:
    data = encode(photo(seed=22), "JPEG", comment=b"kept on purpose")
    checked = check_image(data, replace(FetchConfig(), strip_metadata=False))
    assert checked.reason == "ok" and checked.data == data

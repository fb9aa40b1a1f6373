"""Metadata removal rewrites containers, never pixels."""

from __future__ import annotations

import io

from conftest import encode, photo
from PIL import Image, PngImagePlugin

from curate.fetching.strip import png_crc_ok, strip_jpeg, strip_png, strip_webp


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

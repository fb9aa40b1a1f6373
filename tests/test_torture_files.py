"""Every odd file of the torture corpus gets its expected fetch reason, and what is released holds only the
primary image: its pixels byte for byte, its colour profile, at most its orientation, and no other metadata
by any reader's account (Pillow, the raw bytes, and exiftool, which knows far more metadata kinds than we do).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torture_files as torture
from PIL import Image, ImageFile

from curate.config import FetchConfig
from curate.fetching import imagecheck
from curate.fetching.imagecheck import check_image
from curate.fetching.strip import png_crc_ok
from curate.schema import REASONS

CORPUS = torture.torture_files()
RELEASED = sorted(name for name, (_, reason) in CORPUS.items() if reason == torture.OK)

# What exiftool may report about a released file: the container's structure, the colour profile, orientation.
ALLOWED_GROUPS = ("System", "Adobe", "ICC")  # "ICC" covers ICC-header, ICC_Profile, ICC-chrm, ICC-view, ...
ALLOWED_TAGS = {
    "SourceFile",
    "ExifTool:ExifToolVersion",
    "IFD0:Orientation",
    *(f"Composite:{tag}" for tag in ("ImageSize", "Megapixels")),
    *(f"JFIF:{tag}" for tag in ("JFIFVersion", "ResolutionUnit", "XResolution", "YResolution")),
    *(
        f"File:{tag}"
        for tag in (
            "FileType",
            "FileTypeExtension",
            "MIMEType",
            "ImageWidth",
            "ImageHeight",
            "EncodingProcess",
            "BitsPerSample",
            "ColorComponents",
            "YCbCrSubSampling",
            "ExifByteOrder",
        )
    ),
    *(
        f"PNG:{tag}"
        for tag in (
            "ImageWidth",
            "ImageHeight",
            "BitDepth",
            "ColorType",
            "Compression",
            "Filter",
            "Interlace",
            "Palette",
            "Transparency",
            "ProfileName",
            "Gamma",
            "SRGBRendering",
            "PixelsPerUnitX",
            "PixelsPerUnitY",
            "PixelUnits",
        )
    ),
    *(
        f"RIFF:{tag}"
        for tag in ("ImageWidth", "ImageHeight", "HorizontalScale", "VerticalScale", "VP8Version", "WebP_Flags")
    ),
}


def forbidden(report: dict[str, object]) -> list[str]:
    """The tags exiftool found that are not structure, colour or orientation: GPS, EXIF, XMP, IPTC, MPF, comments,
    thumbnails, trailers, and its warnings (about trailers, unknown segments or embedded images among them)."""
    return sorted(
        f"{key}={value}"
        for key, value in report.items()
        if key not in ALLOWED_TAGS and not key.startswith(ALLOWED_GROUPS)
    )


@pytest.fixture(scope="module")
def released() -> dict[str, tuple[bytes, bytes]]:
    """name -> (source bytes, released bytes) for every file the corpus expects released."""
    cfg = FetchConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt EXIF and MPF we planted
        return {name: (CORPUS[name][0], check_image(CORPUS[name][0], cfg).data) for name in RELEASED}


@pytest.fixture
def tolerant_reference() -> Iterator[None]:
    """Read a source as a reference even where a chunk we drop is damaged (Pillow checks ancillary CRCs)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def test_corpus_is_large_varied_and_every_released_file_carries_metadata() -> None:
    assert len(CORPUS) >= 40
    assert {reason for _, reason in CORPUS.values()} <= set(REASONS["fetch"])
    assert len(RELEASED) >= 20 and len(CORPUS) - len(RELEASED) >= 20
    for name in RELEASED:
        assert any(secret in CORPUS[name][0] for secret in torture.SECRETS), name


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_file_gets_its_reason_and_never_raises(name: str) -> None:
    data, expected = CORPUS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = check_image(data, FetchConfig())
    assert checked.reason == expected, checked.error
    if expected == torture.OK:
        assert checked.data and checked.sha256 and checked.error is None
        assert checked.orientation == torture.ORIENTATIONS.get(name, 1)
    else:
        assert checked.data == b"" and checked.sha256 is None
        assert " at 0x" not in (checked.error or "")  # the same bytes give the same manifest


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data", "ignore:Image appears to be a malformed MPO")
@pytest.mark.parametrize("name", RELEASED)
def test_released_file_is_the_primary_image_untouched_without_its_metadata(
    name: str, released: dict[str, tuple[bytes, bytes]], tolerant_reference: None
) -> None:
    source, clean = released[name]
    reference = Image.open(io.BytesIO(source))  # an MPO opens on its primary frame
    reference.load()
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # the released bytes get no tolerance
    image = Image.open(io.BytesIO(clean))
    image.load()
    assert image.format in ("JPEG", "PNG", "WEBP") and not getattr(image, "is_animated", False)
    assert (image.mode, image.size) == (reference.mode, reference.size)
    assert image.tobytes() == reference.tobytes()
    assert image.info.get("icc_profile") == reference.info.get("icc_profile")
    assert image.getexif().get(0x0112, 1) == torture.ORIENTATIONS.get(name, 1)
    assert len(image.getexif()) == (name in torture.ORIENTATIONS)  # orientation alone, or no EXIF at all
    for secret in torture.SECRETS:
        assert secret not in clean, secret
    assert b"http://ns.adobe.com" not in clean and b"Photoshop 3.0" not in clean and b"MPF\x00" not in clean
    if image.format == "JPEG":
        assert clean.endswith(b"\xff\xd9") and b"\xff\xfe" not in clean
    elif image.format == "PNG":
        assert clean.endswith(b"IEND\xae\x42\x60\x82") and png_crc_ok(clean)
    else:
        assert struct.unpack("<I", clean[4:8])[0] == len(clean) - 8


def exiftool(paths: list[Path]) -> dict[str, dict[str, object]]:
    """exiftool's report on each file: every tag (-a), its group (-G1), embedded files and frames too (-ee, -u)."""
    command = ["exiftool", "-j", "-a", "-G1", "-ee", "-u", *[str(path) for path in paths]]
    result = subprocess.run(command, capture_output=True, check=False, timeout=300)
    assert result.stdout, result.stderr  # exiftool exits 1 on a file it calls damaged, and still reports on it
    return {Path(str(item["SourceFile"])).name: item for item in json.loads(result.stdout)}


def test_exiftool_finds_nothing_but_structure_colour_and_orientation(
    released: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    if shutil.which("exiftool") is None:
        if os.environ.get("CURATE_REQUIRE_EXIFTOOL"):
            pytest.fail("exiftool is required (CURATE_REQUIRE_EXIFTOOL is set): apt-get install libimage-exiftool-perl")
        pytest.skip("exiftool not installed (Debian: libimage-exiftool-perl)")
    paths = []
    for name, (source, clean) in released.items():
        (tmp_path / f"{name}.source").write_bytes(source)
        (tmp_path / f"{name}.released").write_bytes(clean)
        paths += [tmp_path / f"{name}.source", tmp_path / f"{name}.released"]
    reports = exiftool(paths)
    leaks = {name: forbidden(reports[f"{name}.released"]) for name in released}
    assert {name: found for name, found in leaks.items() if found} == {}
    # The check is not blind: on the sources it sees the metadata we planted. Bytes after the EOI with no MPF
    # index pointing at them are the one thing exiftool passes over silently; the byte checks above cover them.
    unseen = {name for name in released if not forbidden(reports[f"{name}.source"])}
    assert unseen <= {"jpeg_garbage_after_eoi", "jpeg_appended_jpeg_with_gps"}


# ----------------------------------------------------------------- the defects this corpus was built around


def test_orientation_stored_as_long_70000_is_released_upright_not_a_dead_shard() -> None:
    data, _ = CORPUS["jpeg_orientation_long_70000"]
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 70000  # the file really says 70000
    checked = check_image(data, FetchConfig())  # used to raise struct.error out of check_image
    assert (checked.reason, checked.orientation) == ("ok", 1)
    assert b"Exif" not in checked.data and torture.CAMERA not in checked.data


def test_mpo_second_frame_with_gps_is_not_released() -> None:
    data, _ = CORPUS["mpo_gps_in_second_frame"]
    source = Image.open(io.BytesIO(data))
    assert source.format == "MPO" and getattr(source, "n_frames", 1) == 2
    source.seek(1)
    assert source.getexif().get_ifd(0x8825)  # the GPS position sits in the second frame
    first_frame_only = torture.jpeg(1)
    checked = check_image(data, FetchConfig())
    assert checked.reason == "ok" and checked.data == check_image(first_frame_only, FetchConfig()).data
    assert Image.open(io.BytesIO(checked.data)).format == "JPEG" and torture.PLACE not in checked.data


@pytest.mark.parametrize("tail", ["jpeg_appended_jpeg_with_gps", "jpeg_garbage_after_eoi"])
def test_nothing_after_the_primary_images_eoi_is_released(tail: str) -> None:
    data, _ = CORPUS[tail]
    alone = check_image(torture.jpeg(1), FetchConfig()).data
    assert len(data) > len(torture.jpeg(1)) and check_image(data, FetchConfig()).data == alone


def test_restart_markers_and_later_scans_survive_the_scan_walk(released: dict[str, tuple[bytes, bytes]]) -> None:
    _, restarts = released["jpeg_restart_markers"]
    assert any(bytes([0xFF, 0xD0 + n]) in restarts for n in range(8))
    source, progressive = released["jpeg_progressive_exif"]
    assert progressive.count(b"\xff\xda") == source.count(b"\xff\xda") > 3


def test_an_unforeseen_exception_is_the_images_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, fmt: str, orientation: object = 1) -> bytes:
        raise KeyError("a bug, not a bad file")

    monkeypatch.setattr(imagecheck, "strip_metadata", broken)
    checked = check_image(torture.jpeg(1), FetchConfig())
    assert checked.reason == "internal_error" and checked.format == "jpeg"
    assert checked.error and checked.error.startswith("KeyError") and "broken" in checked.error

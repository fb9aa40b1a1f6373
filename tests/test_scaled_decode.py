"""The 1/8-scale JPEG check reaches the same verdict as a full decode, on damaged real photos too."""

from __future__ import annotations

import random
from dataclasses import replace

from conftest import encode
from PIL import Image

from curate.config import FetchConfig
from curate.fetching.imagecheck import check_image
from curate.run import SAMPLE_DIR


def damaged_variants(data: bytes, rng: random.Random) -> list[bytes]:
    variants = [data, data[: len(data) // 2], data[: int(len(data) * 0.9)], data[:-2]]
    for _ in range(3):
        flipped = bytearray(data)
        for _ in range(20):
            flipped[rng.randrange(len(data) // 3, len(data))] = rng.randrange(256)
        variants.append(bytes(flipped))
    return variants


def test_scaled_and_full_decode_agree_on_real_and_damaged_photos() -> None:
    scaled, full = FetchConfig(), replace(FetchConfig(), full_decode=True)
    rng = random.Random(0)
    compared = 0
    verdicts = set()
    for path in sorted((SAMPLE_DIR / "images").glob("*.jpg")):
        for variant in damaged_variants(path.read_bytes(), rng):
            a, b = check_image(variant, scaled), check_image(variant, full)
            assert (a.reason, a.sha256, a.width, a.height) == (b.reason, b.sha256, b.width, b.height), path.name
            verdicts.add(a.reason)
            compared += 1
    assert compared >= 200
    assert {"ok", "corrupt"} <= verdicts  # the damage really produced failures


def test_fine_detail_is_not_mistaken_for_single_colour() -> None:
    # One pixel differs: block averages almost hide it, the full-resolution confirmation does not.
    image = Image.new("RGB", (256, 256), (120, 120, 120))
    image.putpixel((100, 100), (255, 255, 255))
    assert check_image(encode(image, "JPEG", quality=100), FetchConfig()).reason == "ok"
    blank = encode(Image.new("RGB", (256, 256), (120, 120, 120)), "JPEG")
    assert check_image(blank, FetchConfig()).reason == "single_colour"

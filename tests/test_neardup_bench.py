"""bench/neardup.py on a few real sample photos: its variants are reproducible and what each family says they are,
its counts of caught variants and false merges are right where the answer is known, and main() prints a row for
every family."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageOps

from curate.config import CurateConfig, DedupConfig

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "curate/sample_data/images"
# small and large, wide and tall, grey, and a PNG with transparency
PHOTOS = (
    "caffe_cat.jpg",
    "dlib_000288_00470387.jpg",
    "dlib_mmod_cars_test_image.jpg",
    "esr_children-alpha.png",
    "esr_wolf_gray.jpg",
    "fr_obama_partial_face.jpg",
)


@pytest.fixture(scope="module")
def nd() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_neardup", REPO / "bench/neardup.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(nd: ModuleType) -> list[Image.Image]:
    return [nd.load(SAMPLE / name) for name in PHOTOS]


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        image.load()
        return image.convert("RGB")


def test_variants_are_reproducible_and_decodable(nd: ModuleType, images: list[Image.Image]) -> None:
    for photo, image in enumerate(images):
        first = nd.items_of(image, photo, photo, seed=3)
        again = nd.items_of(image, photo, photo, seed=3)
        assert [(i.image_id, i.data) for i in first] == [(i.image_id, i.data) for i in again]
        assert {i.family for i in first} == {None, *nd.FAMILIES}
        assert len({i.image_id for i in first}) == len(first)
        for item in first:
            assert min(decoded(item.data).size) >= 1
        other = {i.image_id: i.data for i in nd.items_of(image, photo, photo, seed=4)}
        assert (
            other[f"p{photo:04d}/crop_5_10/crop"] != {i.image_id: i.data for i in first}[f"p{photo:04d}/crop_5_10/crop"]
        )


def test_each_family_is_what_it_says(nd: ModuleType, images: list[Image.Image]) -> None:
    for photo, image in enumerate(images):
        w, h = image.size
        made = {name: (out, quality) for name, out, quality in nd.variants_of(image, photo, seed=0)}
        sizes = {name: decoded(nd.jpeg(out, quality)).size for name, (out, quality) in made.items()}
        assert {n for n in made if n.startswith("reencode/")} == {"reencode/q55", "reencode/q35"}
        assert sizes["reencode/q55"] == (w, h) and made["reencode/q35"][1] == 35
        assert sizes["resize/80%"] == (round(w * 0.8), round(h * 0.8))
        assert sizes["resize/50%"] == (round(w * 0.5), round(h * 0.5))
        for family, low, high in (("crop_2_5", 0.02, 0.05), ("crop_5_10", 0.05, 0.10)):
            cw, ch = sizes[f"{family}/crop"]
            # two sides, each cut by low..high of the dimension (rounded to a pixel)
            assert w - 2 * round(w * high) - 1 <= cw <= w - 2 * round(w * low) + 1, (family, w, cw)
            assert h - 2 * round(h * high) - 1 <= ch <= h - 2 * round(h * low) + 1, (family, h, ch)
        (thumb,) = [size for name, size in sizes.items() if name.startswith("thumbnail/")]
        assert max(thumb) <= 200 and abs(thumb[0] / thumb[1] - w / h) < 0.05
        assert np.array_equal(np.asarray(made["mirror/flip"][0]), np.asarray(ImageOps.mirror(image)))
        (rotated,) = [size for name, size in sizes.items() if name.startswith("rotate/")]
        assert 0.8 * w <= rotated[0] < w and 0.8 * h <= rotated[1] < h
        borders = [name for name in made if name.startswith("border/")]
        assert len(borders) == 2
        for name in borders:
            framed = np.asarray(made[name][0])
            bw, bh = framed.shape[1] - w, framed.shape[0] - h
            if "bars_tb" in name:
                assert bw == 0 and 2 * round(0.04 * h) - 1 <= bh <= 2 * round(0.12 * h) + 1
            elif "bars_lr" in name:
                assert bh == 0 and 2 * round(0.04 * w) - 1 <= bw <= 2 * round(0.12 * w) + 1
            else:
                assert name.startswith("border/frame_") and bw == bh > 0
            left, top = bw // 2, bh // 2
            # the photo is all there, untouched, inside bars of one colour
            assert np.array_equal(framed[top : top + h, left : left + w], np.asarray(image))
            bars = np.ones(framed.shape[:2], dtype=bool)
            bars[top : top + h, left : left + w] = False
            assert len(np.unique(framed[bars].reshape(-1, 3), axis=0)) == 1
            colour = framed[bars][0]
            assert colour[0] == colour[1] == colour[2]
            if "black" in name or "white" in name:
                assert int(colour[0]) == (0 if "black" in name else 255)
            # and after JPEG, still the photo inside (bar edges blur a little)
            back = np.asarray(decoded(nd.jpeg(*made[name])), dtype=np.int16)[top : top + h, left : left + w]
            assert np.abs(back - np.asarray(image, dtype=np.int16)).mean() < 6


def test_rotate_crop_leaves_no_corner_fill(nd: ModuleType) -> None:
    white = Image.new("RGB", (400, 300), (255, 255, 255))
    for degrees in (1.0, -2.0, 3.0):
        cw, ch = nd.inscribed(400, 300, degrees)
        turned = white.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)  # fills corners black
        left, top = (400 - cw) // 2, (300 - ch) // 2
        assert np.asarray(turned.crop((left, top, left + cw, top + ch))).min() >= 250


def test_counts_on_a_known_case(nd: ModuleType, images: list[Image.Image]) -> None:
    cat, cars = nd.jpeg(images[0], 90), nd.jpeg(images[2], 90)
    cfg = CurateConfig(dedup=DedupConfig())
    items = [
        nd.Item("cat", 0, None, "q90", cat),
        nd.Item("cat-copy", 0, "copy", "exact", cat),  # an exact copy: the same group
        nd.Item("cat-other", 0, "other", "unrelated", cars),  # a different photo said to be the cat's variant
    ]
    alone = nd.score(items, cfg)
    assert (alone.variants, alone.caught) == ({"copy": 1, "other": 1}, {"copy": 1, "other": 0})
    assert alone.originals == 1 and alone.pairs == 0 and alone.merged == []

    # the cars photo as an original too: its copy, said to be the cat's, joins the cars' group - a false merge
    merged = nd.score([*items, nd.Item("cars", 1, None, "q90", cars)], cfg)
    assert merged.caught == {"copy": 1, "other": 0}
    assert merged.originals == 2 and merged.pairs == 1 and merged.merged == [(0, 1, "variants")]

    # two originals with the same bytes: merged as originals
    twins = nd.score([nd.Item("cat", 0, None, "q90", cat), nd.Item("cat-again", 1, None, "q90", cat)], cfg)
    assert twins.merged == [(0, 1, "originals")]
    assert nd.score([items[0], nd.Item("cars", 1, None, "q90", cars)], cfg).merged == []


def test_settings_pass_through(nd: ModuleType) -> None:
    assert nd.parse_setting("default:") == ("default", {})
    assert nd.parse_setting("x:phash_distance=8, flip=True,note=abc,ks=[1, 2]") == (
        "x",
        {"phash_distance": 8, "flip": True, "note": "abc", "ks": [1, 2]},
    )
    with pytest.raises(ValueError):
        nd.parse_setting(":phash_distance=3")


def test_main_prints_every_family(nd: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "neardup.json"
    argv = ["--photos", str(SAMPLE), "--limit", "4", "--setting", "default:", "--json", str(out), "--minimum-distance"]
    assert nd.main(argv) == 0
    printed = capsys.readouterr().out
    for family in nd.FAMILIES:
        assert f"| default | {family} | " in printed
    report = json.loads(out.read_text())
    default = report["settings"]["default"]
    assert len(report["photos"]) == 4 and default["originals"] == 4 and default["pairs"] == 6
    assert default["families"]["reencode"]["variants"] == 8
    assert default["families"]["reencode"]["caught"] == 8  # q55 and q35 move a pHash by a few bits at most
    assert set(report["distances"]["families"]) >= set(nd.FAMILIES)

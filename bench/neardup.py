"""Near-duplicate benchmark on real photos: which everyday edits of a photo the dedup stage puts in the photo's
group (recall per family of edits), and how many pairs of different photos it merges (false merges).

    .venv/bin/python bench/neardup.py [--photos DIR [DIR ...]] [--limit N] [--seed S] \
        [--setting NAME:key=value,key=value ...] [--json PATH] [--minimum-distance]

Photos: every image file in --photos (default: curate/sample_data/images and ../shared/evalsets/dev/images), read
where it is; a file whose bytes equal an earlier one's is the same photo and counts once (the sample images are
copies of dev images). --limit N draws N of them (seeded by --seed). Nothing is written but --json.

Each photo (upright, RGB) is re-saved as JPEG q90 at its own size: its *original*. Its variants, by family, each
family's randomness seeded from (seed, photo, family) so that a run, or a photo drawn by another --limit, is the
same every time:
    reencode   JPEG q55 and q35
    resize     80 % and 50 % per side, JPEG q75
    crop_2_5   each side cut by its own uniform 2-5 % of that dimension
    crop_5_10  each side cut by 5-10 %
    border     bars top+bottom or left+right, each 4-12 % of that dimension, and a uniform border on all four
               sides (4-12 % of the shorter side); black, white or a random grey; the photo is untouched inside
    rotate     1-3 degrees either way (expand=False), cropped to the largest upright rectangle inside the photo
    mirror     left-right flip
    colour     brightness and contrast x0.8-1.2, saturation x0.7-1.3
    overlay    a line of text, a semi-transparent rectangle of up to 8 % of the area in a corner, or both
    thumbnail  longest side 120-200 px
Variants are JPEG q90 unless said otherwise.

Scoring: all originals and variants go, in one process and one call each, through the stage's own code:
`features_of_images` (the per-image pHash code of the stage) and `assign_groups` (exact, near and mirror links,
connected components). A variant is *caught* when its dedup_group is its original's (a link through another
variant of the same photo counts: that is what the stage does). A *false merge* is a pair of different photos
with anything of one (original or variant) in a group with anything of the other; it is counted once per pair,
against all C(n, 2) pairs, and listed by file name with how it happened ("originals": the two originals
themselves share a group; "variants": only through variants). A real set can hold genuine near-duplicates
(two shots of one scene): the list is there for a person to look at, not to be hidden.

--setting NAME:key=value,...: one run with CurateConfig(dedup=DedupConfig(key=value, ...)), values read as Python
literals (else strings) and passed on as given, so new DedupConfig fields work without a change here. Default:
`default:` and `phash8:phash_distance=8`. Features are recomputed for every setting (a setting may change them);
the seconds spent hashing and grouping are printed per setting.

--minimum-distance: with DedupConfig(), the pHash Hamming distance from each variant to its original per family
(min / median / 90th percentile / max, and the share within 5 and 8 bits), and the closest pairs of originals.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from curate.config import CurateConfig, DedupConfig
from curate.stages.dedup import assign_groups, features_of_images

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = (
    REPO / "curate/sample_data/images",
    Path(__file__).resolve().parents[2] / "shared/evalsets/dev/images",
)
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_SETTINGS = ("default:", "phash8:phash_distance=8")
ORIGINAL_QUALITY = 90

# One family's output for one photo: (kind, image, JPEG quality) per variant; kind names it within the family.
Variants = list[tuple[str, Image.Image, int]]
Family = Callable[[Image.Image, np.random.Generator], Variants]


# -- families ----------------------------------------------------------------------------------------------------


def reencode(image: Image.Image, rng: np.random.Generator) -> Variants:
    return [("q55", image, 55), ("q35", image, 35)]


def resize(image: Image.Image, rng: np.random.Generator) -> Variants:
    w, h = image.size
    return [
        (f"{round(s * 100)}%", image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS), 75)
        for s in (0.8, 0.5)
    ]


def cut(image: Image.Image, rng: np.random.Generator, low: float, high: float) -> Image.Image:
    """Each side cut by its own uniform fraction of that dimension, so the crop is off-centre."""
    w, h = image.size
    left, right = (round(w * f) for f in rng.uniform(low, high, 2))
    top, bottom = (round(h * f) for f in rng.uniform(low, high, 2))
    return image.crop((left, top, w - right, h - bottom))


def crop_2_5(image: Image.Image, rng: np.random.Generator) -> Variants:
    return [("crop", cut(image, rng, 0.02, 0.05), ORIGINAL_QUALITY)]


def crop_5_10(image: Image.Image, rng: np.random.Generator) -> Variants:
    return [("crop", cut(image, rng, 0.05, 0.10), ORIGINAL_QUALITY)]


def _solid(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    choice = int(rng.integers(3))
    if choice == 0:
        return "black", (0, 0, 0)
    if choice == 1:
        return "white", (255, 255, 255)
    grey = int(rng.integers(40, 216))
    return "grey", (grey, grey, grey)


def pad(image: Image.Image, left: int, top: int, right: int, bottom: int, colour: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), colour)
    canvas.paste(image, (left, top))
    return canvas


def border(image: Image.Image, rng: np.random.Generator) -> Variants:
    """Bars are added around the photo (letterbox or pillarbox), not painted over it: the photo is all there."""
    w, h = image.size
    name, colour = _solid(rng)
    if rng.random() < 0.5:
        bar = round(h * rng.uniform(0.04, 0.12))
        bars = ("bars_tb_" + name, pad(image, 0, bar, 0, bar, colour), ORIGINAL_QUALITY)
    else:
        bar = round(w * rng.uniform(0.04, 0.12))
        bars = ("bars_lr_" + name, pad(image, bar, 0, bar, 0, colour), ORIGINAL_QUALITY)
    name, colour = _solid(rng)
    side = round(min(w, h) * rng.uniform(0.04, 0.12))
    return [bars, ("frame_" + name, pad(image, side, side, side, side, colour), ORIGINAL_QUALITY)]


def inscribed(w: int, h: int, degrees: float) -> tuple[int, int]:
    """The largest upright rectangle inside a w x h one turned by `degrees` (both centred)."""
    a = math.radians(abs(degrees))
    sin_a, cos_a = math.sin(a), math.cos(a)
    long, short = max(w, h), min(w, h)
    if short <= 2 * sin_a * cos_a * long:  # a thin image: the rectangle touches both long sides
        x = 0.5 * short
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    # a pixel off each side for the resampled, half-filled edge
    return max(1, min(w, math.floor(wr)) - 2), max(1, min(h, math.floor(hr)) - 2)


def rotate(image: Image.Image, rng: np.random.Generator) -> Variants:
    degrees = float(rng.uniform(1, 3) * rng.choice([-1, 1]))
    turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    w, h = image.size
    cw, ch = inscribed(w, h, degrees)
    left, top = (w - cw) // 2, (h - ch) // 2
    return [(f"{degrees:+.1f}deg", turned.crop((left, top, left + cw, top + ch)), ORIGINAL_QUALITY)]


def mirror(image: Image.Image, rng: np.random.Generator) -> Variants:
    return [("flip", ImageOps.mirror(image), ORIGINAL_QUALITY)]


def colour(image: Image.Image, rng: np.random.Generator) -> Variants:
    b, c, s = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.3)
    out = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)).enhance(s)
    return [(f"b{b:.2f}_c{c:.2f}_s{s:.2f}", out, ORIGINAL_QUALITY)]


def overlay(image: Image.Image, rng: np.random.Generator) -> Variants:
    """A watermark-like line of text along the bottom, a translucent box in a corner (<= 8 % of the area), or
    both: what reposts add."""
    w, h = image.size
    what = ("text", "box", "both")[int(rng.integers(3))]
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if what in ("box", "both"):
        area = rng.uniform(0.03, 0.08) * w * h
        aspect = rng.uniform(0.5, 2.0)
        bw, bh = min(w, round(math.sqrt(area * aspect))), min(h, round(math.sqrt(area / aspect)))
        x = 0 if rng.random() < 0.5 else w - bw
        y = 0 if rng.random() < 0.5 else h - bh
        fill = (*(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(100, 200)))
        draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=fill)
    if what in ("text", "both"):
        size = max(8, round(h * rng.uniform(0.04, 0.08)))
        font = ImageFont.load_default(size=size)  # a scalable font from Pillow 10.1 on
        text = f"@{''.join(chr(int(c)) for c in rng.integers(97, 123, 7))} photo {int(rng.integers(2000, 2030))}"
        x, y = round(w * rng.uniform(0.02, 0.3)), h - round(size * 1.6)
        draw.text((x, y), text, font=font, fill=(255, 255, 255, 220), stroke_width=1, stroke_fill=(0, 0, 0, 220))
    out = Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
    return [(what, out, ORIGINAL_QUALITY)]


def thumbnail(image: Image.Image, rng: np.random.Generator) -> Variants:
    w, h = image.size
    longest = int(rng.integers(120, 201))
    scale = min(1.0, longest / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return [(f"{longest}px", image.resize(size, Image.Resampling.LANCZOS), 85)]


FAMILIES: dict[str, Family] = {
    "reencode": reencode,
    "resize": resize,
    "crop_2_5": crop_2_5,
    "crop_5_10": crop_5_10,
    "border": border,
    "rotate": rotate,
    "mirror": mirror,
    "colour": colour,
    "overlay": overlay,
    "thumbnail": thumbnail,
}


# -- photos and images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image scored: an original (family None) or a variant of photo `source`."""

    image_id: str
    source: int  # index into the run's photo list
    family: str | None
    kind: str
    data: bytes


def photo_files(dirs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Every image file under dirs, sorted within each; the second list: files whose bytes an earlier one has."""
    seen: set[str] = set()
    kept: list[Path] = []
    repeated: list[Path] = []
    for folder in dirs:
        for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            (repeated if digest in seen else kept).append(path)
            seen.add(digest)
    return kept, repeated


def choose(count: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, size=limit, replace=False))


def load(path: Path) -> Image.Image:
    """Upright RGB (the stage hashes upright too); transparency over white."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
        return image.convert("RGB")


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def family_rng(seed: int, photo: int, family: str) -> np.random.Generator:
    # crc32, not hash(): str hashes change from one process to the next
    return np.random.default_rng([seed, photo, zlib.crc32(family.encode())])


def variants_of(image: Image.Image, photo: int, seed: int, families: Sequence[str] = tuple(FAMILIES)) -> Variants:
    """(family/kind, image, quality) for every variant of one photo, before JPEG."""
    return [
        (f"{family}/{kind}", out, quality)
        for family in families
        for kind, out, quality in FAMILIES[family](image, family_rng(seed, photo, family))
    ]


def items_of(image: Image.Image, source: int, photo: int, seed: int) -> list[Item]:
    """The original and every variant of one photo, as JPEG bytes. `photo` (its place among all the photos
    found) seeds it, `source` (its place in this run) names it."""
    items = [Item(f"p{source:04d}/original", source, None, "q90", jpeg(image, ORIGINAL_QUALITY))]
    for name, out, quality in variants_of(image, photo, seed):
        family, kind = name.split("/", 1)
        items.append(Item(f"p{source:04d}/{name}", source, family, kind, jpeg(out, quality)))
    return items


# -- settings and scoring ------------------------------------------------------------------------------------------


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """NAME:key=value,key=value -> (NAME, {key: value}); a value is a Python literal if it reads as one."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"--setting {text!r}: NAME:key=value,... expected")
    values: dict[str, Any] = {}
    # split at commas that start a new key=, so that a value may be a list or a tuple
    for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest):
        if not part.strip():
            continue
        key, eq, raw = part.partition("=")
        if not eq:
            raise ValueError(f"--setting {text!r}: {part!r} is not key=value")
        try:
            values[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            values[key.strip()] = raw.strip()
    return name, values


@dataclass
class Score:
    """One setting's counts."""

    variants: dict[str, int] = field(default_factory=dict)  # by family
    caught: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)  # family/kind -> (variants, caught)
    originals: int = 0
    merged: list[tuple[int, int, str]] = field(default_factory=list)  # (source a < b, "originals" | "variants")
    unhashed: int = 0  # images the stage could not hash (or whose features failed): in no near group
    hash_seconds: float = 0.0
    group_seconds: float = 0.0

    @property
    def pairs(self) -> int:
        return self.originals * (self.originals - 1) // 2


def groups_of(items: Sequence[Item], cfg: CurateConfig) -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
    """The stage's features and assignments for items (same row order), and the seconds each took."""
    started = time.perf_counter()
    features = features_of_images([i.image_id for i in items], [i.data for i in items], cfg)
    hashed = time.perf_counter()
    out = assign_groups(features, cfg)
    grouped = time.perf_counter()
    return features, out, hashed - started, grouped - hashed


def score(items: Sequence[Item], cfg: CurateConfig) -> Score:
    features, out, hash_seconds, group_seconds = groups_of(items, cfg)
    assert list(out["image_id"]) == [i.image_id for i in items], "assign_groups changed the row order"
    group = out["dedup_group"].astype(object).where(out["dedup_group"].notna(), None).tolist()
    result = Score(hash_seconds=hash_seconds, group_seconds=group_seconds)
    result.unhashed = int((~features["phash_ok"].to_numpy(dtype=bool)).sum())
    original_group = {i.source: g for i, g in zip(items, group, strict=True) if i.family is None}
    result.originals = len(original_group)
    for item, g in zip(items, group, strict=True):
        if item.family is None:
            continue
        hit = g is not None and g == original_group.get(item.source)
        result.variants[item.family] = result.variants.get(item.family, 0) + 1
        result.caught[item.family] = result.caught.get(item.family, 0) + hit
        key = f"{item.family}/{item.kind}"
        n, c = result.kinds.get(key, (0, 0))
        result.kinds[key] = (n + 1, c + hit)
    members: dict[str, set[int]] = {}
    for item, g in zip(items, group, strict=True):
        if g is not None:
            members.setdefault(g, set()).add(item.source)
    merged: set[tuple[int, int]] = set()
    for sources in members.values():
        ordered = sorted(sources)
        merged.update((a, b) for k, a in enumerate(ordered) for b in ordered[k + 1 :])
    for a, b in sorted(merged):
        ga, gb = original_group.get(a), original_group.get(b)
        result.merged.append((a, b, "originals" if ga is not None and ga == gb else "variants"))
    return result


# -- diagnostics ---------------------------------------------------------------------------------------------------


def distances(items: Sequence[Item], names: Sequence[str], closest: int = 10) -> dict[str, Any]:
    """pHash Hamming distances, with DedupConfig(): variant to its original per family (and a mirror to its
    original's mirror hash), and the closest pairs of originals."""
    features, _, _, _ = groups_of(items, CurateConfig(dedup=DedupConfig()))
    ok = features["phash_ok"].to_numpy(dtype=bool)
    values = features["phash"].to_numpy().view(np.uint64)
    mirrors = features["phash_mirror"].to_numpy().view(np.uint64)
    row_of = {i.source: k for k, i in enumerate(items) if i.family is None and ok[k]}
    per_family: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        if item.family is None or not ok[k] or item.source not in row_of:
            continue
        base = row_of[item.source]
        per_family.setdefault(item.family, []).append(int(np.bitwise_count(values[k] ^ values[base])))
        if item.family == "mirror":
            d = int(np.bitwise_count(values[k] ^ mirrors[base]))
            per_family.setdefault("mirror (vs mirror hash)", []).append(d)
    summary = {
        family: {
            "n": len(d),
            "min": int(np.min(d)),
            "median": float(np.median(d)),
            "p90": float(np.percentile(d, 90)),
            "max": int(np.max(d)),
            "within_5": float(np.mean(np.asarray(d) <= 5)),
            "within_8": float(np.mean(np.asarray(d) <= 8)),
        }
        for family, d in per_family.items()
    }
    sources = sorted(row_of)
    hashes = values[[row_of[s] for s in sources]]
    gaps = np.bitwise_count(hashes[:, None] ^ hashes[None, :]).astype(np.int64)
    a, b = np.triu_indices(len(sources), k=1)
    order = np.argsort(gaps[a, b], kind="stable")[:closest]
    pair_gaps = gaps[a, b]
    return {
        "families": summary,
        "originals": len(sources),
        "closest_originals": [
            {"a": names[sources[a[k]]], "b": names[sources[b[k]]], "distance": int(pair_gaps[k])} for k in order
        ],
        "original_pairs_within": {str(t): int((pair_gaps <= t).sum()) for t in (5, 8, 10, 12)},
    }


# -- report --------------------------------------------------------------------------------------------------------


def table(results: dict[str, Score]) -> list[str]:
    lines = ["| setting | family | variants | caught | recall |", "|---|---|---:|---:|---:|"]
    for name, result in results.items():
        for family in FAMILIES:
            n, c = result.variants.get(family, 0), result.caught.get(family, 0)
            recall = f"{c / n:.3f}" if n else "-"
            lines.append(f"| {name} | {family} | {n} | {c} | {recall} |")
    return lines


def merges(name: str, result: Score, names: Sequence[str]) -> list[str]:
    rate = len(result.merged) / result.pairs if result.pairs else 0.0
    lines = [
        f"{name}: {result.originals} originals, {len(result.merged)} of {result.pairs} distinct pairs merged "
        f"(false-merge rate {rate:.5f}); hashing {result.hash_seconds:.2f} s, grouping {result.group_seconds:.2f} s"
    ]
    if result.unhashed:
        lines.append(f"  {result.unhashed} images without a pHash (undecodable or failed): never near-grouped")
    lines += [f"  merged ({how}): {names[a]} + {names[b]}" for a, b, how in result.merged]
    return lines


def distance_lines(found: dict[str, Any]) -> list[str]:
    lines = [
        "pHash Hamming distance, variant to its original (DedupConfig()):",
        "| family | n | min | median | p90 | max | <=5 | <=8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family, s in found["families"].items():
        lines.append(f"| {family} | {s['n']} | {s['min']} | {s['median']:.1f} | {s['p90']:.1f} | {s['max']} | "
                     f"{s['within_5']:.3f} | {s['within_8']:.3f} |")  # fmt: skip
    within = ", ".join(f"<= {t}: {n}" for t, n in found["original_pairs_within"].items())
    lines.append(f"closest distinct originals ({found['originals']} originals; pairs {within}):")
    lines += [f"  {c['distance']:>2}  {c['a']} + {c['b']}" for c in found["closest_originals"]]
    return lines


def as_json(results: dict[str, Score], settings: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    return {
        name: {
            "dedup": {k: v if isinstance(v, (int, float, str, bool)) else repr(v) for k, v in settings[name].items()},
            "families": {
                f: {
                    "variants": r.variants.get(f, 0),
                    "caught": r.caught.get(f, 0),
                    "recall": r.caught.get(f, 0) / r.variants[f] if r.variants.get(f) else None,
                }
                for f in FAMILIES
            },
            "kinds": {k: {"variants": n, "caught": c} for k, (n, c) in sorted(r.kinds.items())},
            "originals": r.originals,
            "pairs": r.pairs,
            "merged_pairs": len(r.merged),
            "unhashed": r.unhashed,
            "false_merge_rate": len(r.merged) / r.pairs if r.pairs else 0.0,
            "merged": [{"a": names[a], "b": names[b], "how": how} for a, b, how in r.merged],
            "hash_seconds": r.hash_seconds,
            "group_seconds": r.group_seconds,
        }
        for name, r in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--photos", nargs="+", type=Path, default=list(DEFAULT_PHOTOS), metavar="DIR")
    parser.add_argument("--limit", type=int, default=None, help="draw this many photos (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", action="append", default=None, metavar="NAME:key=value,...")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--minimum-distance", action="store_true", help="pHash distance diagnostics")
    args = parser.parse_args(argv)
    settings = dict(parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS))
    configs: dict[str, CurateConfig] = {}
    for name, values in settings.items():
        try:
            dedup = DedupConfig(**values)
        except TypeError as err:  # a key DedupConfig does not have (yet)
            parser.error(f"--setting {name}: {err}")
        if problems := dedup.problems():
            parser.error(f"--setting {name}: {'; '.join(problems)}")
        configs[name] = CurateConfig(dedup=dedup)

    started = time.perf_counter()
    files, repeated = photo_files(args.photos)
    chosen = choose(len(files), args.limit, args.seed)
    names = [files[i].name for i in chosen]
    items: list[Item] = []
    for source, photo in enumerate(chosen):
        items += items_of(load(files[photo]), source, photo, args.seed)
    made = time.perf_counter() - started
    print(f"{len(files)} distinct photos in {', '.join(str(d) for d in args.photos)} ({len(repeated)} files skipped: "
          f"the same bytes as an earlier one); {len(chosen)} used, {len(items)} images (originals and variants) "
          f"made in {made:.1f} s, seed {args.seed}")  # fmt: skip

    results: dict[str, Score] = {}
    for name, cfg in configs.items():
        results[name] = score(items, cfg)
    print()
    print("\n".join(table(results)))
    print()
    for name, result in results.items():
        print("\n".join(merges(name, result, names)))
    report: dict[str, Any] = {
        "photos": names,
        "seed": args.seed,
        "images": len(items),
        "settings": as_json(results, settings, names),
    }
    if args.minimum_distance:
        found = distances(items, names)
        print()
        print("\n".join(distance_lines(found)))
        report["distances"] = found
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Thumbnails with the detectors' boxes drawn on them, and contact sheets of them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from curate.detect.decide import FAMILIES
from curate.io.tars import read_members
from curate.rundir import RunDir

COLOURS = {"face": (230, 40, 40), "person": (40, 120, 240), "hand": (40, 180, 80)}
THUMB = 256


def image_bytes(run_dir: Path | str, rows: pd.DataFrame) -> dict[str, bytes]:
    """image_id -> the stored image bytes, read shard tar by shard tar."""
    run = RunDir(Path(run_dir))
    found: dict[str, bytes] = {}
    for shard in sorted(set(rows["shard"])):
        group = rows[rows["shard"] == shard]
        members = read_members(run.images(int(shard)), set(group["tar_member"]))
        for image_id, member in zip(group["image_id"], group["tar_member"], strict=True):
            if member in members:
                found[image_id] = members[member]
    return found


def boxes(row: pd.Series) -> list[tuple[str, float, float, float, float, float]]:
    """(family, x1, y1, x2, y2, score) from the manifest's flattened `<family>_<detector>_boxes` columns."""
    out: list[tuple[str, float, float, float, float, float]] = []
    for column, value in row.items():
        name = str(column)
        if not name.endswith("_boxes") or value is None or (isinstance(value, float) and pd.isna(value)):
            continue
        family = name.split("_", 1)[0]
        flat = list(value)
        for k in range(0, len(flat) - 4, 5):
            x1, y1, x2, y2, score = (float(v) for v in flat[k : k + 5])
            out.append((family, x1, y1, x2, y2, score))
    return out


def thumbnail(data: bytes, row: pd.Series, side: int = THUMB) -> Image.Image:
    """The upright image scaled to fit side x side, with face (red) and person (blue) boxes and their scores."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    for family, x1, y1, x2, y2, score in boxes(row):
        colour = COLOURS.get(family, (240, 200, 40))
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale, y2 * scale], outline=colour, width=2)
        draw.text((x1 * scale + 2, y1 * scale + 1), f"{score:.2f}", fill=colour)
    return image


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def caption(row: pd.Series) -> str:
    parts = [f"{f} {row[f]:.2f}" for f in FAMILIES if f in row and pd.notna(row[f])]
    return " · ".join(parts) or "no scores"


def contact_sheet(items: Sequence[tuple[Image.Image, str]], columns: int = 6, side: int = THUMB) -> Image.Image:
    """A grid of thumbnails with a caption line under each."""
    columns = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // columns))
    cell_h = side + 16
    sheet = Image.new("RGB", (columns * side, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (image, text) in enumerate(items):
        x, y = (index % columns) * side, (index // columns) * cell_h
        sheet.paste(image, (x + (side - image.width) // 2, y + (side - image.height) // 2))
        draw.text((x + 3, y + side + 2), text[:48], fill=(0, 0, 0))
    return sheet

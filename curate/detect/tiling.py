"""Tiles: overlapping crops of an image, scored besides its full view so that small, distant people are seen
at a larger scale (`detect.person_tiles`; a registry entry's ``tiles`` says whether its detector takes them).

This module is the geometry only: where the crops lie (`tile_windows`), which of a crop's sides cut through the
image (`cutting_sides`) and which boxes touch such a side (`cut_by_window`), i.e. probably show a part of an
object that goes on beyond the crop. How the crops go into a batch is `curate.detect.batching`'s.
"""

from __future__ import annotations

import math

import torch


def tile_windows(h: int, w: int, tiles: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of a tiles x tiles grid of crops covering the image, neighbours overlapping by
    ``overlap`` of a crop's size. Empty for tiles <= 1."""
    if tiles <= 1:
        return []

    def spans(n: int) -> list[tuple[int, int]]:
        t = min(n, math.ceil(n / (tiles - (tiles - 1) * overlap)))
        step = (n - t) / (tiles - 1)
        return [(round(k * step), round(k * step) + t) for k in range(tiles)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(h) for x0, x1 in spans(w)]


def cutting_sides(window: tuple[int, int, int, int], image_hw: tuple[int, ...]) -> tuple[bool, bool, bool, bool]:
    """Which sides (left, top, right, bottom) of the crop ``window`` (x0, y0, x1, y1) cut through the image, i.e.
    are not on its border."""
    x0, y0, x1, y1 = window
    h, w = image_hw[:2]
    return x0 > 0, y0 > 0, x1 < w, y1 < h


def cut_by_window(
    boxes: torch.Tensor, windows: torch.Tensor, cutting: torch.Tensor, margin: torch.Tensor
) -> torch.Tensor:
    """Which boxes (N, 4), in image coordinates, reach within ``margin`` (N,) of a side of their crop ``windows``
    (N, 4) that cuts through the image (``cutting`` (N, 4), from ``cutting_sides``): objects that probably go on
    beyond the crop."""
    near = torch.stack(
        [
            boxes[:, 0] <= windows[:, 0] + margin,
            boxes[:, 1] <= windows[:, 1] + margin,
            boxes[:, 2] >= windows[:, 2] - margin,
            boxes[:, 3] >= windows[:, 3] - margin,
        ],
        dim=1,
    )
    return (near & cutting).any(dim=1)

"""Post-processing for a whole batch at once: candidate selection, per-image ranking and NMS, with one transfer
to the host at the end.

Done image by image, post-processing paid a host synchronisation for every ``nonzero``, ``nms`` and ``.cpu()``
call: a few per image, which on a GPU cost more than the network itself. Here every image's candidates travel
together, tagged with their image's index (their *group*), and the helpers below never let two groups interact.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torchvision

# the CUDA NMS kernel keeps an N x N/64 mask of 64-bit words: cap N per call so that it stays small (20k: 50 MB)
NMS_CHUNK = 20_000


def sort_by_group_then_score(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The permutation that orders candidates by group ascending, then score descending; ties keep their
    order (stable), so the result does not depend on how many other images share the batch.
    Scores must lie in [0, 1]: group g then maps into [2g - 1, 2g], disjoint from every other group."""
    key = groups.double() * 2.0 - scores.double()
    return torch.sort(key, stable=True).indices


def rank_in_group(groups: torch.Tensor) -> torch.Tensor:
    """For candidates already sorted by group: each one's position within its own group (0, 1, 2, ...).
    (``searchsorted`` finds each group's first position without the host synchronisation ``bincount`` needs.)"""
    first = torch.searchsorted(groups, groups, side="left")
    return torch.arange(len(groups), device=groups.device) - first


def grouped_nms(boxes: torch.Tensor, groups: torch.Tensor, iou: float, plus_one: bool = False) -> torch.Tensor:
    """Greedy NMS within each group, for candidates already sorted by group, then score descending (as
    ``sort_by_group_then_score`` leaves them). Returns the indices kept, in that same order.

    Each group's boxes are moved to a region of their own, so that boxes of different groups never overlap and
    one kernel call serves many images. The shift is done in float64, whose 53-bit mantissa still resolves
    coordinates of 1e7 pixels to about 2e-9; the boxes' own order is passed as the score, so that NMS visits them
    exactly in the given order (ties included). ``plus_one``: the reference RetinaFace convention in which a
    box spans x2 - x1 + 1 pixels.
    """
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shifted = boxes.double()
    if plus_one:
        shifted = shifted + shifted.new_tensor([0.0, 0.0, 1.0, 1.0])
    shifted = shifted - shifted.min()
    span = shifted.max() + 1.0
    shifted = shifted + (groups.double() * span)[:, None]
    order = -torch.arange(n, device=boxes.device, dtype=torch.float64)  # visit in the given order
    if n <= NMS_CHUNK:
        return torch.sort(torchvision.ops.nms(shifted, order, iou)).values
    # chunks of whole groups, each up to NMS_CHUNK candidates (a larger group gets a call of its own)
    cuts, size = [0], 0
    for count in torch.bincount(groups).cpu().tolist():
        if size and size + count > NMS_CHUNK:
            cuts.append(cuts[-1] + size)
            size = 0
        size += count
    cuts.append(n)
    kept = [
        torch.sort(torchvision.ops.nms(shifted[a:b], order[a:b], iou)).values + a for a, b in itertools.pairwise(cuts)
    ]
    return torch.cat(kept)


def split_to_host(
    groups: torch.Tensor, n_groups: int, columns: Sequence[torch.Tensor], per_group: torch.Tensor | None = None
) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Per group, the rows of each column (candidates sorted by group) as float32 NumPy arrays, and
    ``per_group`` (values per group, any shape) as a flat NumPy array: everything in a single transfer to the host.
    Returns ``([per group][per column], per_group)``."""
    widths = [1 if c.ndim == 1 else c.shape[1] for c in columns]
    rows = len(groups)
    packed = torch.cat(
        [
            groups.float()[:, None],  # exact: group numbers are far below 2**24
            *(c.float().reshape(rows, w) for c, w in zip(columns, widths, strict=True)),
        ],
        dim=1,
    )
    extra = per_group.float().reshape(-1) if per_group is not None else packed.new_zeros(0)
    host = torch.cat([packed.reshape(-1), extra]).cpu().numpy()
    table = host[: packed.numel()].reshape(rows, 1 + sum(widths))
    counts = np.bincount(table[:, 0].astype(np.int64), minlength=n_groups) if rows else np.zeros(n_groups, int)
    bounds = np.cumsum([1, *widths])
    out = []
    for part in np.split(table, np.cumsum(counts)[:-1]):
        out.append([_column(part, bounds[j], bounds[j + 1], widths[j]) for j in range(len(columns))])
    return out, host[packed.numel() :]


def _column(rows: np.ndarray, start: int, stop: int, width: int) -> np.ndarray:
    block = np.ascontiguousarray(rows[:, start:stop], dtype=np.float32)
    return block.reshape(-1) if width == 1 else block

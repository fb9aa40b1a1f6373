"""Batching, shared by the detectors: which images share a forward pass, how they are laid into one input
tensor, and how a batch's work is queued now and finished later.

- Grouping: `chunks` (consecutive, at most a batch each), `groups_by_key` (images that must share a padded
  size), `size_batches` (similar sizes, so that padding wastes little), `canvas_batches` (a few square shapes
  that recur, for CUDA's per-shape plan search) and `next_power_of_two` (a few batch counts that recur).
- Filling: `padded_batch` puts each image in the top-left corner of a zero canvas, `PaddingMasks` (with
  `valid_sizes`) makes that padding harmless inside a network, `letterbox` / `letterbox_crops` resize images
  or their tiles into a preallocated batch, and `pad_to_count` adds filler inputs.
- Queueing: `submit_batches` queues every batch's network work before any post-processing waits for the
  device (the `Detector.submit` protocol); `run_batches` is its synchronous form. Both give the detections in
  the images' own order, whatever order the batches took.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F

from curate.detect.images import Image
from curate.detect.types import Detections

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# --------------------------------------------------------------------------------------------------- grouping


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of ``items``, each at most ``size`` long."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def groups_by_key(keys: Iterable[K]) -> dict[K, list[int]]:
    """The indices of equal keys, per key, in order of first appearance (indices ascending within a key)."""
    groups: dict[K, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int, max_waste: float = 0.25) -> list[list[int]]:
    """Indices grouped into batches of similar sizes, so that padding to a batch's largest height and width
    wastes little: landscape and portrait apart, sorted by area, a batch closed when it is full or when padding
    would exceed ``max_waste`` of its real pixels."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] > sizes[i][1], sizes[i][0] * sizes[i][1], sizes[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        trial = [*current, index]
        height, width = max(sizes[i][0] for i in trial), max(sizes[i][1] for i in trial)
        real = sum(sizes[i][0] * sizes[i][1] for i in trial)
        if current and (len(trial) > batch_size or len(trial) * height * width > (1 + max_waste) * real):
            batches.append(current)
            current = [index]
        else:
            current = trial
    if current:
        batches.append(current)
    return batches


def canvas_batches(sizes: Sequence[tuple[int, int]], batch_size: int, step: int) -> list[Sequence[int]]:
    """Indices grouped by the square canvas (long side rounded up to a multiple of ``step``) they fit, smallest
    canvas first, in chunks of ``batch_size``."""
    by_side = groups_by_key(math.ceil(max(height, width) / step) for height, width in sizes)
    return [chunk for side in sorted(by_side) for chunk in chunks(by_side[side], batch_size)]


def next_power_of_two(count: int) -> int:
    """The smallest power of two >= ``count`` (>= 1): batch counts rounded up to it recur, and on CUDA every new
    count costs cuDNN a plan search."""
    return 1 << (count - 1).bit_length()


# --------------------------------------------------------------------------------------------------- filling


def padded_batch(
    images: Iterable[torch.Tensor], count: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A (count, 3, height, width) channels-last batch of ``dtype``: each (3, h, w) image of ``images`` in the
    top-left corner of its slot, converted on the way (one copy each), zero elsewhere and in slots past the
    images. ``images`` may be a generator: only one image need be held at a time."""
    batch = torch.zeros((count, 3, height, width), device=device, dtype=dtype)
    batch = batch.contiguous(memory_format=torch.channels_last)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    return batch


def valid_sizes(
    sizes: Sequence[tuple[int, int]], height: int, width: int, count: int, device: torch.device
) -> torch.Tensor | None:
    """Each image's own (height, width) in a padded batch of ``count`` slots of height x width, as
    `PaddingMasks` takes it (filler slots past the images count as whole); None when no image is padded."""
    if all(size == (height, width) for size in sizes):
        return None
    return torch.tensor([*sizes, *[(height, width)] * (count - len(sizes))], device=device)


def pad_to_count(batch: torch.Tensor, count: int, fill: float) -> torch.Tensor:
    """``batch`` followed by filler inputs (every value ``fill``) up to ``count`` in all."""
    filler = batch.new_full((count, *batch.shape[1:]), fill)
    filler[: len(batch)] = batch
    return filler


class PaddingMasks:
    """Zeroes the padded area of a batch's feature maps, as zero padding does around a lone image.

    ``valid`` (B, 2) holds each image's own (height, width) in input pixels (None: nothing is padded);
    ``masks(x, stride)`` zeroes the cells of ``x`` (B, C, h, w), a map at that stride, that the image lacks.
    """

    def __init__(self, valid: torch.Tensor | None) -> None:
        self.valid = valid
        self._cache: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        if self.valid is None:
            return x
        fh, fw = x.shape[-2:]
        key = (stride, fh, fw, x.device)
        padding = self._cache.get(key)
        if padding is None:
            # a lone image of height h has ceil(h / stride) rows at this stride (every stride-2 step is a ceil)
            vh = torch.div(self.valid[:, 0] + stride - 1, stride, rounding_mode="floor")
            vw = torch.div(self.valid[:, 1] + stride - 1, stride, rounding_mode="floor")
            rows = torch.arange(fh, device=x.device)[None, :] < vh[:, None]
            cols = torch.arange(fw, device=x.device)[None, :] < vw[:, None]
            padding = ~(rows[:, None, :, None] & cols[:, None, None, :])
            self._cache[key] = padding
        return torch.where(padding, 0.0, x)  # (not masked_fill: that drops the channels-last layout)


# Above this many uint8 values (16M: 64 MB as float32) an image is resized plane by plane and its tiles one by one,
# bounding memory on huge photos; below it, a grid's tiles go through one resize (fewer kernel launches on a GPU).
CHUNK_ELEMENTS = 1 << 24


def letterbox(images: torch.Tensor, size: int, out: torch.Tensor) -> float:
    """Resize (3, H, W) image(s), or a stack (N, 3, H, W) of same-sized ones, any dtype, 0..255, by
    r = min(size/H, size/W) with bilinear interpolation into the top-left corner of ``out`` ((3 or N, 3), size,
    size, float), which already holds the pad value. Returns r. The caller rounds ``out`` to whole pixel values
    afterwards, as a uint8 resize would (the pad value and unresized pixels are whole already), and flips it to
    BGR: both once per batch rather than once per image."""
    h, w = images.shape[-2:]
    r = min(size / h, size / w)
    nh, nw = max(int(h * r), 1), max(int(w * r), 1)
    if (nh, nw) == (h, w):
        out[..., :nh, :nw] = images
    elif images.numel() <= CHUNK_ELEMENTS:
        stacked = images.float() if images.ndim == 4 else images.float()[None]
        resized = F.interpolate(stacked, size=(nh, nw), mode="bilinear", align_corners=False)
        out[..., :nh, :nw] = resized if images.ndim == 4 else resized[0]
    else:
        # A 48 MP photo in float32 is 576 MB, its nine tiles 768 MB: resize one plane (one image, one channel) at a
        # time instead. Bilinear resizing treats planes independently, so the pixels are the same.
        planes = images.reshape(-1, h, w)
        target = out.reshape(-1, *out.shape[-2:])
        for k in range(planes.shape[0]):
            plane = planes[k].float()[None, None]
            target[k, :nh, :nw] = F.interpolate(plane, size=(nh, nw), mode="bilinear", align_corners=False)[0, 0]
    return r


def letterbox_crops(
    image: torch.Tensor, windows: Sequence[tuple[int, int, int, int]], size: int, out: torch.Tensor
) -> list[float]:
    """Each crop window (x0, y0, x1, y1) of the (3, H, W) ``image`` letterboxed (see `letterbox`) into the
    matching slot of ``out`` (len(windows), 3, size, size); returns each crop's ratio r. The windows of a tile
    grid all have one size, so their crops go through one resize as a stack; an image above ``CHUNK_ELEMENTS``
    has its crops resized one at a time instead, never a stack of copies. Empty windows: nothing to do."""
    if not windows:
        return []
    if image.numel() > CHUNK_ELEMENTS:
        return [letterbox(image[:, y0:y1, x0:x1], size, out[k]) for k, (x0, y0, x1, y1) in enumerate(windows)]
    crops = torch.stack([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows])
    return [letterbox(crops, size, out)] * len(windows)


# --------------------------------------------------------------------------------------------------- queueing


def in_place(count: int, batches: Iterable[tuple[Sequence[int], Sequence[Detections]]]) -> list[Detections]:
    """The detections of ``batches`` (each: its images' indices, and their detections in that order) as one
    list in index order, ``count`` long; an index no batch holds gets empty detections."""
    results: list[Detections | None] = [None] * count
    for group, detections in batches:
        for index, found in zip(group, detections, strict=True):
            results[index] = found
    return [r if r is not None else Detections() for r in results]


def run_batches(
    images: Sequence[Image], groups: Sequence[Sequence[int]], run: Callable[[list[Image]], Sequence[Detections]]
) -> list[Detections]:
    """``run`` on each group's images in turn (one batch at a time); the detections in the images' order."""
    return in_place(len(images), ((group, run([images[i] for i in group])) for group in groups))


def submit_batches(
    images: Sequence[Image],
    groups: Sequence[Sequence[int]],
    forward: Callable[[list[Image]], Callable[[], Sequence[Detections]]],
) -> Callable[[], list[Detections]]:
    """Queue every group's network work now (``forward`` on its images returns the post-processing that
    finishes it) and return the function that finishes them all: post-processing waits for the device, so a
    caller can queue other models' work in between. Both run under ``torch.inference_mode``."""
    with torch.inference_mode():
        pending = [(group, forward([images[i] for i in group])) for group in groups]

    def finish() -> list[Detections]:
        with torch.inference_mode():
            return in_place(len(images), ((group, postprocess()) for group, postprocess in pending))

    return finish

"""YOLOX (Megvii, COCO 80 classes) as a person detector: pre-processing, tiles, decoding and NMS around the
network of `curate.detect.yolox_network`, whose weights `curate.detect.yolox_weights` reads.

Input: BGR, raw 0..255 pixels, letterboxed to the top-left corner of a square canvas filled with 114
(`curate.detect.batching.letterbox`); optionally a grid of overlapping tiles of each image too
(`curate.detect.tiling`). Score: objectness x person probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curate.config import DetectConfig
from curate.detect.batching import chunks, letterbox, letterbox_crops, next_power_of_two, pad_to_count, submit_batches
from curate.detect.builder import Builder, Identified, report_floor
from curate.detect.images import Image, image_hw, to_chw
from curate.detect.postprocess import grouped_nms, sort_by_group_then_score, split_to_host
from curate.detect.tiling import cut_by_window, cutting_sides, tile_windows
from curate.detect.types import Detections
from curate.detect.yolox_network import BN_EPS, STRIDES, VARIANTS, canonical_variant
from curate.detect.yolox_weights import load_yolox

PERSON = 0  # COCO's class index of a person
PAD_VALUE = 114.0
# a tile's box reaching within this many input pixels of a side of the tile that cuts the image is dropped
CUT_MARGIN = 2.0


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


_GRID_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor-point xy (A, 2) and stride (A, 1) for a size x size input, in the head's output order."""
    key = (size, str(device))
    if key not in _GRID_CACHE:
        xy, st = [], []
        for s in STRIDES:
            n = math.ceil(size / s)
            yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            xy.append(torch.stack((xv, yv), dim=-1).reshape(-1, 2))
            st.append(torch.full((n * n, 1), float(s)))
        _GRID_CACHE[key] = (torch.cat(xy).float().to(device), torch.cat(st).to(device))
    return _GRID_CACHE[key]


def decode_boxes(raw: torch.Tensor, size: int) -> torch.Tensor:
    """Raw head output (N, A, >=4) for a size x size input -> boxes (N, A, 4) x1, y1, x2, y2 in input pixels."""
    grid, stride = _grid(size, raw.device)
    if raw.shape[1] != grid.shape[0]:
        raise ValueError(f"output has {raw.shape[1]} anchor points, expected {grid.shape[0]} for input {size}")
    raw = raw.float()
    centre = (raw[..., :2] + grid) * stride
    half = torch.exp(raw[..., 2:4]) * stride / 2
    return torch.cat((centre - half, centre + half), dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------------------


Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class FullViews:
    """A batch's full views, looked at: what tile_policy=auto decides from which tiles to look at."""

    images: Sequence[Image]
    raw: torch.Tensor  # (N, A, 85) raw head outputs of the full views, on the device
    ratios: list[float]  # each image's letterbox ratio
    sizes: list[tuple[int, int]]  # each image's (h, w)
    best: list[float]  # each image's best full-view score (as `Detections.best`)
    windows: list[list[Window]]  # each image's tile windows (none: too small for tiles)
    peaks: list[list[float]]  # per window, the full view's best raw person score of an anchor centred in it


class YoloxDetector(Identified):
    """Person boxes and scores (objectness x person probability) from YOLOX, in original pixel coordinates.

    ``weights``: an ONNX export of an official model (initializers are read, onnxruntime is not used) or an
    official ``.pth`` checkpoint. ``input_size`` defaults to the variant's official test size (416 for nano and
    tiny, 640 for s/m/l/x). ``half`` (float16 weights and inputs) applies on CUDA only. Every letterboxed input
    of a batch of ``batch_size`` images goes through one forward pass.

    Tiles, for small distant people: ``tiles`` > 1 adds a tiles x tiles grid of overlapping crops
    (``tile_overlap`` of a crop's size) per image, each letterboxed to ``input_size``. They are cut only from
    images whose long side exceeds ``tile_min_side`` (default ``input_size``: smaller images are already seen at
    full resolution; the pipeline sets 0, as its decision holds tile scores to a bar of their own). With
    ``tile_drop_cut``, a tile's boxes that touch a side of the tile cutting through the image are dropped: parts
    of an object that the overlapping neighbour or the full-image pass sees whole. Boxes of all views go through
    one NMS; ``best`` is the best score of the full view alone, ``tiles_best`` that of the tiles alone (None for
    an image that got no tiles).

    ``report_floor``: boxes scoring below it are not returned (NMS never lets a lower box suppress a higher one,
    so no box above it changes), while ``best`` and ``tiles_best`` still give the top scores.
    """

    name = "yolox"
    version = "1"

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {
            "variants": VARIANTS,
            "strides": STRIDES,
            "person": PERSON,
            "pad_value": PAD_VALUE,
            "bn_eps": BN_EPS,
            "cut_margin": CUT_MARGIN,
        }

    @classmethod
    def effective(cls, bound: dict[str, Any]) -> dict[str, Any]:
        variant = canonical_variant(bound["variant"])
        size = VARIANTS[variant][3] if bound["input_size"] is None else bound["input_size"]
        side = size if bound["tile_min_side"] is None else bound["tile_min_side"]
        return {**bound, "variant": variant, "input_size": size, "tile_min_side": side}

    def __init__(
        self,
        weights: Path,
        variant: str = "nano",
        input_size: int | None = None,
        device: str | torch.device = "cpu",
        score_floor: float = 0.05,
        nms_iou: float = 0.45,
        batch_size: int = 32,
        tiles: int = 1,
        half: bool = False,
        tile_overlap: float = 0.2,
        tile_min_side: int | None = None,
        tile_drop_cut: bool = True,
        report_floor: float = 0.0,
        tile_policy: str = "always",
        tile_gate: float = 0.0,
    ) -> None:
        self._identify(locals())
        self.variant = canonical_variant(variant)
        if input_size is None:
            input_size = VARIANTS[self.variant][3]
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.input_size = input_size
        self.device = torch.device(device)
        self.score_floor = score_floor
        self.nms_iou = nms_iou
        self.batch_size = max(1, batch_size)
        self.tiles = max(1, tiles)
        self.tile_overlap = tile_overlap
        self.tile_min_side = input_size if tile_min_side is None else tile_min_side
        self.tile_drop_cut = tile_drop_cut
        self.report_floor = report_floor
        if tile_policy not in ("always", "auto"):  # "off" never reaches a detector: it is tiles=1 (DetectConfig)
            raise ValueError(f"tile_policy must be always or auto, got {tile_policy!r}")
        self.tile_policy = tile_policy
        self.tile_gate = tile_gate
        self.half = half and self.device.type == "cuda"
        model = load_yolox(Path(weights), self.variant).fuse()
        # channels-last: about 2x faster on CPU for this network (depthwise and 1x1 convs)
        model = model.to(self.device, torch.float16 if self.half else torch.float32)
        self.model = model.to(memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def raw_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw head output (N, A, 85), float32, for letterboxed BGR inputs (N, 3, S, S)."""
        dtype = torch.float16 if self.half else torch.float32
        return self.model(batch.to(self.device, dtype).contiguous(memory_format=torch.channels_last)).float()

    def windows(self, image: Image) -> list[tuple[int, int, int, int]]:
        """The tile windows of one image (none below ``tile_min_side``, or without tiles)."""
        h, w = image_hw(image)
        return tile_windows(h, w, self.tiles, self.tile_overlap) if max(h, w) > self.tile_min_side else []

    def preprocess(
        self, images: Sequence[Image]
    ) -> tuple[torch.Tensor, list[tuple[int, float, tuple[int, int, int, int] | None]]]:
        """All letterboxed inputs (each image, then its tiles) of ``images`` and, per input, (image index,
        ratio r, crop window (x0, y0, x1, y1) in the image, or None for the full image)."""
        return self._inputs(images, [self.windows(image) for image in images], full=True)

    def _inputs(
        self, images: Sequence[Image], windows: Sequence[Sequence[tuple[int, int, int, int]]], full: bool
    ) -> tuple[torch.Tensor, list[tuple[int, float, tuple[int, int, int, int] | None]]]:
        """Letterboxed inputs: per image its full view (when ``full``), then its crops ``windows[i]``; and per
        input (image index, ratio r, window or None for the full view)."""
        s = self.input_size
        views = [(i, to_chw(image, self.device), list(windows[i])) for i, image in enumerate(images)
                 if full or windows[i]]  # fmt: skip
        batch = torch.full((sum(int(full) + len(w) for _, _, w in views), 3, s, s), PAD_VALUE, device=self.device)
        meta: list[tuple[int, float, tuple[int, int, int, int] | None]] = []
        for i, rgb, crops in views:
            if full:
                meta.append((i, letterbox(rgb, s, batch[len(meta)]), None))
            ratios = letterbox_crops(rgb, crops, s, batch[len(meta) : len(meta) + len(crops)])
            meta.extend((i, r, window) for r, window in zip(ratios, crops, strict=True))
        return batch.round_().clamp_(0, 255).flip(1), meta

    def _network(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs of a batch of inputs, queued (on CUDA nothing waits for them yet)."""
        count = len(batch)
        if self.device.type == "cuda" and next_power_of_two(count) != count:
            # a new batch count costs cuDNN a plan search on CUDA: pad to a power of two so that few counts recur
            batch = pad_to_count(batch, next_power_of_two(count), PAD_VALUE)
        return self.raw_outputs(batch)[:count]

    def _forward(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue one batch's network work; returns the post-processing that finishes it."""
        batch, meta = self.preprocess(images)
        raw = self._network(batch)
        sizes = [image_hw(image) for image in images]
        return lambda: self._postprocess(raw, meta, sizes)

    # -- tile_policy=auto: the full views first, then only the tiles that can matter -----------------------------

    def submit_views(self, images: Sequence[Image]) -> Callable[[], FullViews]:
        """Queue the full views of ``images``; the returned function waits for them and gives what decides which
        tiles to look at (`submit_tiles`)."""
        with torch.inference_mode():
            pending = [(group, *self._inputs([images[i] for i in group], [[]] * len(group), full=True))
                       for group in chunks(range(len(images)), self.batch_size)]  # fmt: skip
            raws = [(self._network(batch), meta) for _, batch, meta in pending]

        def finish() -> FullViews:
            with torch.inference_mode():
                return self._full_views(images, raws)

        return finish

    def _full_views(
        self,
        images: Sequence[Image],
        raws: Sequence[tuple[torch.Tensor, list[tuple[int, float, tuple[int, int, int, int] | None]]]],
    ) -> FullViews:
        raw = torch.cat([r for r, _ in raws]) if raws else torch.zeros((0, 0, 85), device=self.device)
        ratio = [r for _, meta in raws for _, r, _ in meta]
        scores = raw[..., 4] * raw[..., 5 + PERSON]
        best = torch.where(scores > self.score_floor, scores, 0.0).amax(dim=1) if len(raw) else scores[:, 0]
        windows = [self.windows(image) for image in images]
        peaks: list[list[float]] = []
        if len(raw):
            boxes = decode_boxes(raw, self.input_size) / torch.tensor(ratio, device=self.device)[:, None, None]
            centre_x, centre_y = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
        for i, crops in enumerate(windows):
            if not crops:
                peaks.append([])
                continue
            w = torch.tensor(crops, device=self.device, dtype=torch.float32)[:, :, None]  # (K, 4, 1)
            inside = (
                (centre_x[i] >= w[:, 0]) & (centre_x[i] < w[:, 2]) & (centre_y[i] >= w[:, 1]) & (centre_y[i] < w[:, 3])
            )
            peaks.append(torch.where(inside, scores[i], 0.0).amax(dim=1).tolist())
        return FullViews(images, raw, ratio, [image_hw(image) for image in images], best.tolist(), windows, peaks)

    def submit_tiles(self, views: FullViews, decided: Sequence[bool]) -> Callable[[], list[Detections]]:
        """Queue the tiles worth looking at (none of an image ``decided`` already; of the others, those where
        the full view's person score reaches ``tile_gate``) and return what finishes every image's detections:
        the full views' and those tiles' boxes through one NMS, as `_postprocess` does for every tile."""
        chosen = [
            [] if decided[i] else [w for w, peak in zip(crops, views.peaks[i], strict=True) if peak >= self.tile_gate]
            for i, crops in enumerate(views.windows)
        ]
        budget = self.batch_size if self.device.type == "cpu" else self.batch_size * (1 + self.tiles**2)
        groups: list[list[int]] = []
        group: list[int] = []
        count = 0
        for i, crops in enumerate(chosen):
            if not crops:
                continue
            if group and count + len(crops) > budget:
                groups.append(group)
                group, count = [], 0
            group.append(i)
            count += len(crops)
        groups += [group] if group else []
        metas: list[tuple[int, float, Window | None]] = [(i, r, None) for i, r in enumerate(views.ratios)]
        raws = [views.raw]
        with torch.inference_mode():
            for group in groups:
                batch, meta = self._inputs([views.images[i] for i in group], [chosen[i] for i in group], full=False)
                raws.append(self._network(batch))
                metas.extend((group[j], r, w) for j, r, w in meta)

        def finish() -> list[Detections]:
            with torch.inference_mode():
                return self._postprocess(torch.cat(raws), metas, views.sizes)

        return finish

    def _postprocess(
        self,
        raw: torch.Tensor,
        meta: Sequence[tuple[int, float, tuple[int, int, int, int] | None]],
        sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """Raw outputs of every input (image or tile) -> one ``Detections`` per image, for the whole batch at once
        (see ``curate.detect.postprocess``): tiles' boxes are mapped back, cut ones dropped, then each image's
        boxes go through NMS together."""
        n = len(sizes)
        # per input: its image, ratio r, the window it shows (x0, y0, x1, y1) and which of its sides cut the image
        image_of = torch.tensor([i for i, _, _ in meta], device=self.device)
        ratio = torch.tensor([r for _, r, _ in meta], device=self.device, dtype=torch.float32)
        windows = [w if w is not None else (0, 0, sizes[i][1], sizes[i][0]) for i, _, w in meta]
        window_t = torch.tensor(windows, device=self.device, dtype=torch.float32)
        cutting = [
            cutting_sides(w, sizes[i]) if self.tile_drop_cut else (False,) * 4
            for (i, _, _), w in zip(meta, windows, strict=True)
        ]
        cut_t = torch.tensor(cutting, device=self.device)
        scores = raw[..., 4] * raw[..., 5 + PERSON]
        entry, anchor = torch.nonzero(scores > self.score_floor, as_tuple=True)
        boxes = decode_boxes(raw, self.input_size)[entry, anchor] / ratio[entry, None]
        boxes = boxes + window_t[entry][:, [0, 1, 0, 1]]
        score = scores[entry, anchor]
        # a tile's box reaching within 2 input pixels of a side that cuts through the image: probably a part of an
        # object that goes on beyond the tile (the overlapping neighbour or the full-image pass sees it whole)
        whole = ~cut_by_window(boxes, window_t[entry], cut_t[entry], CUT_MARGIN / ratio[entry])
        image = image_of[entry][whole]
        boxes, score = boxes[whole], score[whole]
        own = torch.tensor(sizes, device=self.device, dtype=torch.float32)[image]  # (h, w) per box
        boxes = torch.minimum(boxes.clamp(min=0.0), own[:, [1, 0, 1, 0]])
        # the image's best score from its full view and, separately, from its tiles: the decision holds tile
        # scores to a bar of their own (upscaled crops fire more easily)
        from_tile = torch.tensor([w is not None for _, _, w in meta], device=self.device)[entry][whole]
        best = torch.zeros((2, n), device=self.device)
        best[0].scatter_reduce_(0, image, torch.where(from_tile, 0.0, score), "amax")
        best[1].scatter_reduce_(0, image, torch.where(from_tile, score, 0.0), "amax")
        reported = score >= self.report_floor
        image, boxes, score = image[reported], boxes[reported], score[reported]
        order = sort_by_group_then_score(image, score)
        image, boxes, score = image[order], boxes[order], score[order]
        kept = grouped_nms(boxes, image, self.nms_iou)
        per_image, tops = split_to_host(image[kept], n, (boxes[kept], score[kept]), best.T)
        looked = [0] * n  # tiles per image (see tile_min_side, and tile_policy=auto)
        for i, _, window in meta:
            looked[i] += window is not None
        return [
            Detections(
                boxes=b,
                scores=f,
                best=float(full),
                tiles_best=float(tile) if looked[i] else None,
                tiles_looked=looked[i] if self.tiles > 1 else None,
            )
            for i, ((b, f), (full, tile)) in enumerate(zip(per_image, tops.reshape(n, 2), strict=True))
        ]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue the network's work on ``images`` and return the function that finishes it (post-processing,
        which waits for the device); see `curate.detect.batching.submit_batches`."""
        if self.tiles > 1 and self.tile_policy == "auto":  # no other model's scores: no image is decided yet
            views = self.submit_views(images)
            return lambda: self.submit_tiles(views(), [False] * len(images))()
        step = self.batch_size
        if self.device.type == "cpu" and self.tiles > 1:
            # With tiles an image makes up to 1 + tiles² inputs. On the CPU a batch of 16 images (160 inputs, 330 MB
            # of canvases) ran at about half the speed of one image at a time (bench/detect.py: 3.8 against 7.1
            # img/s; not profiled), so there a batch holds at most batch_size inputs.
            step = max(1, self.batch_size // (1 + self.tiles**2))
        return submit_batches(images, chunks(range(len(images)), step), self._forward)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        return self.submit(images)()


def options(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments (the variant is the registry entry's): detect.person_tiles' tiles."""
    return {
        "batch_size": detect.batch_size,
        "half": detect.half,
        "tiles": detect.person_tiles,
        "tile_min_side": detect.person_tile_min_side,
        "report_floor": report_floor(detect),
        "tile_policy": "auto" if detect.tile_policy == "auto" else "always",
        "tile_gate": detect.tile_gate if detect.tile_policy == "auto" else 0.0,
    }


build = Builder(YoloxDetector, options)

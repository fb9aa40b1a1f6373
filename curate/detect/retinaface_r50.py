"""RetinaFace with a ResNet-50 backbone (insightface's model), batched around the `retina-face` package's network.

The network is the PyTorch port in ``retina-face`` 0.0.19 (``retinaface.model.retinaface_pth_model.RetinaFace``);
its weights are that package's ``retinaface.pth``. Only the network comes from the package. Pre- and
post-processing are our own and batched; they reproduce the package's single-image path
(``retinaface.RetinaFace.detect_faces``):

- the image is scaled so that its short side becomes 1024 (up-scaling allowed), unless its long side would
  then exceed 1980, in which case the long side becomes 1980 (``cv2.resize``, bilinear);
- the network takes RGB floats 0..255 (its first batch norm normalises);
- anchors per level (strides 32, 16, 8; two each) with the "+1 pixel" box convention, no variances; boxes
  clipped to the resized image, then scaled back; score = face probability, kept when >= the floor;
- NMS at IoU 0.4 with the "+1 pixel" areas, on boxes in original pixels.

Batching works as for the MobileNet detector (``curate.detect.retinaface``), with the helpers of
``curate.detect.batching``: images are padded to a common size, every convolution or pooling wider than 1×1
sees the padded area as zeros (as a lone image sees its zero padding), and only the anchors of cells the lone
image has are kept. For this the forward pass is re-stated here over the package's own modules; with nothing
padded it computes exactly what the package's ``forward`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.config import DetectConfig
from curate.detect.batching import PaddingMasks, padded_batch, run_batches, size_batches, valid_sizes
from curate.detect.builder import Builder, Identified
from curate.detect.images import Image, image_hw, to_hwc_numpy
from curate.detect.postprocess import grouped_nms, rank_in_group, sort_by_group_then_score, split_to_host
from curate.detect.types import Detections

PACKAGE_VERSION = "0.0.19"
# levels in the package's order; per level two anchors as (x1, y1, x2, y2) around the cell at (0, 0)
STRIDES = (32, 16, 8)
BASE_ANCHORS = {
    32: ((-248.0, -248.0, 263.0, 263.0), (-120.0, -120.0, 135.0, 135.0)),
    16: ((-56.0, -56.0, 71.0, 71.0), (-24.0, -24.0, 39.0, 39.0)),
    8: ((-8.0, -8.0, 23.0, 23.0), (0.0, 0.0, 15.0, 15.0)),
}
TARGET_SHORT_SIDE = 1024
MAX_SIDE = 1980


def build_network(weights: Path | str | None = None) -> nn.Module:
    """The package's ResNet-50 RetinaFace in eval mode on the CPU: with ``weights`` (the package's
    ``retinaface.pth``) loaded strictly, or randomly initialised (from torch's current RNG) for tests."""
    from retinaface.model.retinaface_pth_model import RetinaFace

    net = RetinaFace()
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


# --------------------------------------------------------------------------------------------------- network


def _residual_unit(unit: Any, x: torch.Tensor, masks: PaddingMasks, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's pre-activation bottleneck unit; ``stride`` is that of its input."""
    relu1 = F.relu(unit.bn1(x))
    relu2 = F.relu(unit.bn2(unit.conv1(relu1)))
    relu3 = F.relu(unit.bn3(unit.conv2(masks(relu2, stride))))
    shortcut = unit.sc(relu1) if unit.sc is not None else x
    return unit.conv3(relu3) + shortcut, relu2


def _context(module: Any, x: torch.Tensor, masks: PaddingMasks, stride: int) -> torch.Tensor:
    """The package's SSH context module, every 3×3 conv's input masked."""
    x = masks(x, stride)
    conv1 = module.conv1_bn(module.conv1(x))
    context1 = masks(F.relu(module.context_conv1_bn(module.context_conv1(x))), stride)
    context2 = module.context_conv2_bn(module.context_conv2(context1))
    context3 = masks(F.relu(module.context_conv3_1_bn(module.context_conv3_1(context1))), stride)
    context3 = module.context_conv3_2_bn(module.context_conv3_2(context3))
    return F.relu(torch.cat([conv1, context2, context3], dim=1))


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """×2 nearest, then the package's centre crop to ``like``'s size; the surplus is at most one row/column
    (sizes are ceil(n / 2) and n), where the crop offset is 0: row r takes row r // 2."""
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    height, width = like.shape[-2:]
    assert up.shape[-2] - height in (0, 1) and up.shape[-1] - width in (0, 1)
    return up[:, :, :height, :width]


def forward(net: Any, x: torch.Tensor, valid: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
    """The package network's forward pass on NCHW RGB floats 0..255, padding-aware.

    Returns per level (strides 32, 16, 8) the head's NCHW outputs [probabilities (B, 4, h, w) laid out as
    (bg_a1, bg_a2, face_a1, face_a2), box deltas (B, 8, h, w), landmark deltas (B, 20, h, w)]: the package's
    ``forward`` gives the same tensors, as NHWC, for a lone image. ``valid`` (B, 2): each image's own
    (height, width) inside the padded batch.
    """
    masks = PaddingMasks(valid)
    x = masks(net.bn_data(x), 1)
    x = F.relu(net.bn0(net.conv0(x)))
    x = F.max_pool2d(F.pad(masks(x, 2), (1, 1, 1, 1)), kernel_size=3, stride=2)
    stride = 4
    first_relu2 = []
    for stage in (net.stage1, net.stage2, net.stage3, net.stage4):
        for index, unit in enumerate(stage.values()):
            x, relu2 = _residual_unit(unit, x, masks, stride)
            if index == 0:
                first_relu2.append(relu2)
            stride *= unit.conv2.stride[0]
    x = F.relu(net.bn1(x))

    c3 = F.relu(net.ssh_c3_lateral_bn(net.ssh_c3_lateral(x)))
    c2 = F.relu(net.ssh_c2_lateral_bn(net.ssh_c2_lateral(first_relu2[3])))
    c1 = F.relu(net.ssh_m1_red_conv_bn(net.ssh_m1_red_conv(first_relu2[2])))
    c2 = F.relu(net.ssh_c2_aggr_bn(net.ssh_c2_aggr(masks(c2 + _upsample_to(c3, c2), 16))))
    c1 = F.relu(net.ssh_c1_aggr_bn(net.ssh_c1_aggr(masks(c1 + _upsample_to(c2, c1), 8))))

    levels = [(c3, net.ssh_m3_det, net.face_rpn_stride32), (c2, net.ssh_m2_det, net.face_rpn_stride16)]
    levels.append((c1, net.ssh_m1_det, net.face_rpn_stride8))
    return [
        head(_context(context, features, masks, s))
        for (features, context, head), s in zip(levels, STRIDES, strict=True)
    ]


# --------------------------------------------------------------------------------------------------- anchors


def anchors(height: int, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors (P, 4) as x1, y1, x2, y2 for an input of this size, in the order of the flattened head outputs
    (stride 32, 16, 8; row; column; anchor), and each anchor's cell origin (P, 2) as (x, y) = (col, row)·stride."""
    boxes, origins = [], []
    for stride in STRIDES:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        base = torch.tensor(BASE_ANCHORS[stride], device=device)
        n = base.shape[0]
        ys = torch.arange(rows, device=device, dtype=torch.float32) * stride
        xs = torch.arange(cols, device=device, dtype=torch.float32) * stride
        origin = torch.stack([xs[None, :].expand(rows, cols), ys[:, None].expand(rows, cols)], dim=-1)
        origin = origin[:, :, None, :].expand(rows, cols, n, 2)
        boxes.append((origin.repeat(1, 1, 1, 2) + base).reshape(-1, 4))
        origins.append(origin.reshape(-1, 2))
    return torch.cat(boxes), torch.cat(origins)


def decode(
    anchor: torch.Tensor, deltas: torch.Tensor, landmark_deltas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deltas -> boxes (N, 4) and landmarks (N, 10) with the "+1 pixel" convention (no variances)."""
    size = anchor[:, 2:] - anchor[:, :2] + 1.0
    centre = anchor[:, :2] + 0.5 * (size - 1.0)
    pred_centre = deltas[:, :2] * size + centre
    pred_half = 0.5 * (torch.exp(deltas[:, 2:4]) * size - 1.0)
    boxes = torch.cat([pred_centre - pred_half, pred_centre + pred_half], dim=1)
    points = landmark_deltas.reshape(-1, 5, 2) * size[:, None, :] + centre[:, None, :]
    return boxes, points.reshape(-1, 10)


def package_scale(
    height: int, width: int, target_short_side: int | None, max_side: int | None, allow_upscaling: bool
) -> float:
    """The package's resize factor (``retinaface.commons.preprocess.resize_image``), generalised to optional
    limits: short side to ``target_short_side``, but the long side at most ``max_side``."""
    short, long = min(height, width), max(height, width)
    scale = target_short_side / float(short) if target_short_side is not None else 1.0
    if not allow_upscaling:
        scale = min(1.0, scale)
    if max_side is not None and np.round(scale * long) > max_side:
        scale = max_side / float(long)
    return scale


# --------------------------------------------------------------------------------------------------- detector


class RetinaFaceR50Detector(Identified):
    """insightface's RetinaFace-R50 (via ``retina-face``) behind the batched ``Detector`` protocol.

    ``detect(images)``: RGB uint8 (H, W, 3) images of any sizes -> one ``Detections`` each: boxes
    (x1, y1, x2, y2) and landmarks (5 × (x, y): right eye, left eye, nose, right and left mouth corner) in the
    original image's pixels, face probabilities >= ``score_floor``, sorted by decreasing score.

    Resizing as the package: ``target_short_side`` (None: keep), ``allow_upscaling``, long side at most
    ``max_side`` (None: no limit). ``weights`` None gives a randomly initialised network (tests only).
    ``half`` runs the network in float16 on CUDA (ignored on the CPU). ``max_pad_waste`` as in
    ``RetinaFaceDetector``.
    """

    name = "retinaface_r50"
    version = "1"
    speed_only = frozenset({"device", "batch_size", "max_pad_waste"})
    tiles = 1  # faces are looked for on the full view only

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"strides": STRIDES, "base_anchors": {str(k): v for k, v in BASE_ANCHORS.items()}}

    def __init__(
        self,
        weights: Path | None,
        device: str | torch.device = "cpu",
        score_floor: float = 0.02,
        nms_iou: float = 0.4,
        top_k: int = 5000,
        keep: int = 750,
        batch_size: int = 16,
        max_side: int | None = MAX_SIDE,
        half: bool = False,
        target_short_side: int | None = TARGET_SHORT_SIDE,
        allow_upscaling: bool = True,
        max_pad_waste: float = 0.25,
    ) -> None:
        self._identify(locals())
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(device)
        self.half = bool(half) and self.device.type == "cuda"
        self.dtype = torch.float16 if self.half else torch.float32
        self.net = build_network(weights).to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.score_floor = score_floor
        self.nms_iou = nms_iou
        self.top_k = top_k
        self.keep = keep
        self.batch_size = batch_size
        self.max_side = max_side
        self.target_short_side = target_short_side
        self.allow_upscaling = allow_upscaling
        self.max_pad_waste = max_pad_waste

    def _prepare(self, image: Image) -> tuple[np.ndarray, float]:
        """The (possibly resized) RGB uint8 image and its scale factor."""
        import cv2

        rgb = to_hwc_numpy(image)
        scale = package_scale(rgb.shape[0], rgb.shape[1], self.target_short_side, self.max_side, self.allow_upscaling)
        if scale != 1.0:
            rgb = cv2.resize(np.ascontiguousarray(rgb), None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(rgb)
        return (rgb if rgb.flags.writeable else rgb.copy()), scale

    def _run_batch(self, images: Sequence[Image]) -> list[Detections]:
        prepared = [self._prepare(image) for image in images]
        sizes = [(int(rgb.shape[0]), int(rgb.shape[1])) for rgb, _ in prepared]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        chw = (torch.from_numpy(rgb).to(self.device).permute(2, 0, 1) for rgb, _ in prepared)
        batch = padded_batch(chw, len(images), height, width, self.device, self.dtype)
        valid = valid_sizes(sizes, height, width, len(images), self.device)
        outputs = forward(self.net, batch, valid)
        batch_size = len(images)
        scores = torch.cat([p[:, 2:4].permute(0, 2, 3, 1).reshape(batch_size, -1) for p, _, _ in outputs], 1)
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(batch_size, -1, 4) for _, b, _ in outputs], 1)
        points = torch.cat([m.permute(0, 2, 3, 1).reshape(batch_size, -1, 10) for _, _, m in outputs], 1)
        anchor, origin = anchors(height, width, self.device)
        own = torch.tensor(sizes, device=self.device, dtype=torch.float32)  # (h, w) per image
        # whole batch at once (curate.detect.postprocess); only the cells a lone image of its size has count
        exists = (origin[None, :, 1] < own[:, :1]) & (origin[None, :, 0] < own[:, 1:])
        face = scores.float()
        image, index = torch.nonzero(exists & (face >= self.score_floor), as_tuple=True)
        face = face[image, index]
        order = sort_by_group_then_score(image, face)
        order = order[rank_in_group(image[order]) < self.top_k]
        image, index, face = image[order], index[order], face[order]
        boxes, marks = decode(anchor[index], deltas[image, index].float(), points[image, index].float())
        limit = (own[image] - 1.0)[:, [1, 0, 1, 0]]  # (w - 1, h - 1, w - 1, h - 1) of each box's image
        scale = torch.tensor([s for _, s in prepared], device=self.device, dtype=torch.float32)[image, None]
        boxes = torch.minimum(boxes, limit).clamp(min=0.0) / scale
        marks = marks / scale
        kept = grouped_nms(boxes, image, self.nms_iou, plus_one=True)
        kept = kept[rank_in_group(image[kept]) < self.keep]
        per_image, _ = split_to_host(image[kept], batch_size, (boxes[kept], face[kept], marks[kept]))
        return [Detections(boxes=b, scores=f, landmarks=m) for b, f, m in per_image]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """No queueing of its own: the work runs when the result is asked for (``detect``)."""
        return lambda: self.detect(images)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        with torch.inference_mode():
            scaled = []
            for image in images:
                height, width = image_hw(image)
                scale = package_scale(height, width, self.target_short_side, self.max_side, self.allow_upscaling)
                scaled.append((round(height * scale), round(width * scale)))
            return run_batches(images, size_batches(scaled, self.batch_size, self.max_pad_waste), self._run_batch)


def options(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments: the package's resizing, its long side capped by detect.face_max_side when
    that is set."""
    capped = {"max_side": detect.face_max_side} if detect.face_max_side else {}
    return {"batch_size": detect.batch_size, "half": detect.half, **capped}


build = Builder(RetinaFaceR50Detector, options)

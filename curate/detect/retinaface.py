"""RetinaFace with a MobileNet-0.25 backbone: the face detector PASS itself ran, batched.

The network is laid out so that the published checkpoint (`mobilenet0.25_Final.pth`: 433,343 numbers with the
batch-norm statistics, 426,608 learnable parameters) loads with ``load_state_dict(strict=True)``. Pre- and
post-processing follow the published configuration for that checkpoint (its README,
``README-retinaface_mobilenet0.25.md``, sits beside the weights):

- input: BGR float minus the mean (104, 117, 123), no scaling to 0..1, any size;
- priors at strides 8/16/32, anchor sizes (16, 32), (64, 128), (256, 512) pixels, centres (j + 0.5)·stride;
- decoding with variances (0.1, 0.2); face score = softmax index 1;
- PASS's settings: score > 0.02, top-k 5000, NMS at IoU 0.4 (the "+1 pixel" area convention of the reference
  NMS is reproduced), keep 750.

Batching. Images of different sizes share one forward pass: each is placed in the top-left corner of a
canvas of the batch's largest height and width. Padding alone would not give single-image results, because
the padded area stops being zero after the first batch norm and then leaks into the image's border cells
through every 3×3 convolution. So the network zeroes the padded area (`curate.detect.batching.PaddingMasks`)
before every convolution wider than 1×1 — exactly what zero padding does at the border of a lone image — and
post-processing keeps only the anchors of feature-map cells that exist for the image at its own size (cell
row·stride < height and col·stride < width). The result equals single-image inference up to floating-point
rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curate.config import DetectConfig
from curate.detect.batching import (
    PaddingMasks,
    canvas_batches,
    next_power_of_two,
    padded_batch,
    size_batches,
    submit_batches,
    valid_sizes,
)
from curate.detect.builder import Builder, Identified, report_floor
from curate.detect.folding import fold_batch_norms
from curate.detect.images import Image, image_hw, to_chw
from curate.detect.postprocess import grouped_nms, rank_in_group, sort_by_group_then_score, split_to_host
from curate.detect.types import Detections

MEAN_BGR = (104.0, 117.0, 123.0)
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
NUM_PARAMETERS = 433_343


# --------------------------------------------------------------------------------------------------- network


def _conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, slope: float | None = None, groups: int = 1
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return layers


def _conv_dw(cin: int, cout: int, stride: int, slope: float) -> nn.Sequential:
    """Depthwise 3×3 + BN + LeakyReLU, pointwise 1×1 + BN + LeakyReLU (indices 0..5, as in the checkpoint)."""
    return nn.Sequential(*_conv_bn(cin, cin, 3, stride, slope, groups=cin), *_conv_bn(cin, cout, 1, 1, slope))


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, slope: float) -> None:
        super().__init__()
        self.output1 = nn.Sequential(*_conv_bn(in_channels[0], out_channels, 1, 1, slope))
        self.output2 = nn.Sequential(*_conv_bn(in_channels[1], out_channels, 1, 1, slope))
        self.output3 = nn.Sequential(*_conv_bn(in_channels[2], out_channels, 1, 1, slope))
        self.merge1 = nn.Sequential(*_conv_bn(out_channels, out_channels, 3, 1, slope))
        self.merge2 = nn.Sequential(*_conv_bn(out_channels, out_channels, 3, 1, slope))

    def forward(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, masks: PaddingMasks) -> list[torch.Tensor]:
        p3 = self.output3(c3)
        # nearest up-sampling to the finer map's size: row r takes row r // 2 (sizes are 2n or 2n - 1)
        p2 = self.output2(c2) + F.interpolate(p3, size=c2.shape[-2:], mode="nearest")
        p2 = self.merge2(masks(p2, 16))
        p1 = self.output1(c1) + F.interpolate(p2, size=c1.shape[-2:], mode="nearest")
        p1 = self.merge1(masks(p1, 8))
        return [p1, p2, p3]


class _SSH(nn.Module):
    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        self.conv3X3 = nn.Sequential(*_conv_bn(channels, channels // 2, 3, 1, None))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(channels, channels // 4, 3, 1, slope))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(channels // 4, channels // 4, 3, 1, None))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(channels // 4, channels // 4, 3, 1, slope))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(channels // 4, channels // 4, 3, 1, None))

    def forward(self, x: torch.Tensor, masks: PaddingMasks, stride: int) -> torch.Tensor:
        x = masks(x, stride)
        branch5_1 = masks(self.conv5X5_1(x), stride)
        branch7_2 = masks(self.conv7X7_2(branch5_1), stride)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_1), self.conv7x7_3(branch7_2)], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(channels, outputs, 1)

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
        # NCHW -> (B, H·W·anchors, width): position-major, then anchor, as the priors are laid out
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)


class _Body(nn.Module):
    """MobileNet-V1 at width 0.25, cut into the three stages the FPN reads (strides 8, 16, 32)."""

    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn(3, 8, 3, 2, slope)),
            _conv_dw(8, 16, 1, slope),
            _conv_dw(16, 32, 2, slope),
            _conv_dw(32, 32, 1, slope),
            _conv_dw(32, 64, 2, slope),
            _conv_dw(64, 64, 1, slope),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2, slope), *[_conv_dw(128, 128, 1, slope) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2, slope), _conv_dw(256, 256, 1, slope))

    def forward(self, x: torch.Tensor, masks: PaddingMasks) -> list[torch.Tensor]:
        outputs = []
        stride = 1
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                assert isinstance(block, nn.Sequential)
                conv = block[0]
                assert isinstance(conv, nn.Conv2d)
                # every block starts with its 3×3 conv; the image itself is already zero in the padding
                x = block(masks(x, stride) if stride > 1 else x)
                stride *= conv.stride[0]
            outputs.append(x)
        return outputs


class RetinaFaceMobileNet(nn.Module):
    """The network. ``forward(x)`` takes (B, 3, H, W) BGR-minus-mean floats and returns

    - ``loc`` (B, P, 4): box offsets (dx, dy, dw, dh) against the priors of ``priors(H, W)``;
    - ``conf`` (B, P, 2): class logits, softmax over the last axis gives (background, face);
    - ``landmarks`` (B, P, 10): five (dx, dy) offsets.

    ``valid`` (B, 2) optionally gives each image's own (height, width) inside a padded batch; the padded area
    is then zeroed before every spatial convolution (see the module docstring).
    ``slope`` is the LeakyReLU slope of backbone, FPN and SSH; 0.1 for this checkpoint.
    """

    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        channels = 64
        self.body = _Body(slope)
        self.fpn = _FPN([64, 128, 256], channels, slope)
        self.ssh1 = _SSH(channels, slope)
        self.ssh2 = _SSH(channels, slope)
        self.ssh3 = _SSH(channels, slope)
        anchors = len(ANCHOR_SIZES[0])
        self.ClassHead = nn.ModuleList([_Head(channels, anchors * 2) for _ in STRIDES])
        self.BboxHead = nn.ModuleList([_Head(channels, anchors * 4) for _ in STRIDES])
        self.LandmarkHead = nn.ModuleList([_Head(channels, anchors * 10) for _ in STRIDES])

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks = PaddingMasks(valid)
        c1, c2, c3 = self.body(x, masks)
        features = self.fpn(c1, c2, c3, masks)
        features = [
            ssh(f, masks, s) for ssh, f, s in zip((self.ssh1, self.ssh2, self.ssh3), features, STRIDES, strict=True)
        ]
        loc = torch.cat([head(f, 4) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        conf = torch.cat([head(f, 2) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f, 10) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return loc, conf, landmarks


def load_network(weights: Path | str, slope: float = 0.1) -> RetinaFaceMobileNet:
    """The network with the published checkpoint loaded strictly, in eval mode, on the CPU."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module.") :]: value for key, value in state.items()}
    net = RetinaFaceMobileNet(slope)
    net.load_state_dict(state, strict=True)
    return net.eval()


# --------------------------------------------------------------------------------------------------- priors


def _prior_grid(height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Priors (P, 4) as cx, cy, w, h in pixels, and each prior's stride (P,)."""
    priors, strides = [], []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * stride
        cx = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * stride
        size = torch.tensor(sizes, device=device, dtype=torch.float32)
        n = len(sizes)
        grid = torch.stack(
            [
                cx[None, :, None].expand(rows, cols, n),
                cy[:, None, None].expand(rows, cols, n),
                size[None, None, :].expand(rows, cols, n),
                size[None, None, :].expand(rows, cols, n),
            ],
            dim=-1,
        )
        priors.append(grid.reshape(-1, 4))
        strides.append(torch.full((rows * cols * n,), float(stride), device=device))
    return torch.cat(priors), torch.cat(strides)


def priors(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Priors (P, 4) as cx, cy, w, h in pixels for an input of this size, in the network's output order
    (stride 8, 16, 32; row; column; anchor size)."""
    return _prior_grid(height, width, device)[0]


def decode(loc: torch.Tensor, landmarks: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets -> boxes (N, 4) x1, y1, x2, y2 and landmarks (N, 10), in the priors' pixel units."""
    centre = prior[:, :2] + loc[:, :2] * VARIANCES[0] * prior[:, 2:]
    size = prior[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    points = prior[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * prior[:, None, 2:]
    return boxes, points.reshape(-1, 10)


# --------------------------------------------------------------------------------------------------- detector


@contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 in cuDNN convolutions while inside. This checkpoint is fragile: rounding its inputs to TF32 (as
    Ampere and Hopper GPUs do by default), float16 or bfloat16 moves face scores on real photos by up to 0.53
    (measured on the CPU by emulating each rounding), so it always runs in full float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


class RetinaFaceDetector(Identified):
    """PASS's face detector (RetinaFace, MobileNet-0.25) behind the batched ``Detector`` protocol.

    ``detect(images)``: RGB uint8 (H, W, 3) images of any sizes -> one ``Detections`` each, with boxes
    (x1, y1, x2, y2) and landmarks (5 × (x, y)) in the original image's pixels and face probabilities,
    sorted by decreasing score. ``max_side`` optionally shrinks images whose long side exceeds it first
    (None = original size, as PASS). The network always runs in full float32 (see ``full_float32``).
    ``report_floor``: boxes scoring below it are not returned, while ``best`` still gives the image's top score.
    This changes no box at or above it: greedy NMS never lets a lower box suppress a higher one, and the top-k
    and keep limits cut lists sorted by score.
    ``max_pad_waste``: a batch is cut short when padding its images to a common size would add more than this
    fraction of their pixels (``inf`` = plain chunks of ``batch_size`` in size order).
    """

    name = "retinaface_mnet025"
    version = "1"
    # how images are grouped and padded into batches: the padding masks make that no change to the results
    speed_only = frozenset({"device", "batch_size", "max_pad_waste", "canvas_step"})
    tiles = 1  # faces are looked for on the full view only

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"mean_bgr": MEAN_BGR, "strides": STRIDES, "anchor_sizes": ANCHOR_SIZES, "variances": VARIANCES}

    def __init__(
        self,
        weights: Path,
        device: str | torch.device = "cpu",
        score_floor: float = 0.02,
        nms_iou: float = 0.4,
        top_k: int = 5000,
        keep: int = 750,
        report_floor: float = 0.0,
        batch_size: int = 16,
        max_side: int | None = None,
        max_pad_waste: float = 0.25,
        canvas_step: int | None = None,
    ) -> None:
        self._identify(locals())
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(device)
        self.dtype = torch.float32
        # Batch norms folded into their convs (curate.detect.folding): one kernel less per layer. Results move by
        # float32 rounding only (logits by up to 3e-5 on a random input); the padding masks sit before the
        # convolutions and are unaffected. Channels-last is the faster layout for these small convolutions on
        # CPU (oneDNN) and on CUDA alike.
        net = fold_batch_norms(load_network(weights))
        self.net = net.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.score_floor = score_floor
        self.nms_iou = nms_iou
        self.top_k = top_k
        self.keep = keep
        self.report_floor = report_floor
        self.batch_size = batch_size
        self.max_side = max_side
        self.max_pad_waste = max_pad_waste
        # On CUDA a new input shape was slow (about a second for this network on an H100; a cuDNN plan search, we
        # infer: repeated shapes were fast), and PASS
        # images come in many sizes: batches go onto square canvases whose side is a multiple of canvas_step,
        # with the batch count rounded up to a power of two, so a few shapes recur. The padding masks keep the
        # results those of each image alone. On the CPU the tight padding of size_batches costs less.
        self.canvas_step = canvas_step if canvas_step is not None else (128 if self.device.type == "cuda" else 0)
        self._mean = torch.tensor(MEAN_BGR, device=self.device, dtype=torch.float32)[:, None, None]

    def _prepare(self, image: Image) -> tuple[torch.Tensor, tuple[float, float]]:
        """(3, h, w) BGR minus mean on the device, and the (x, y) factors back to original pixels."""
        rgb = to_chw(image, self.device)
        height, width = rgb.shape[1:]
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
            # One channel at a time: a 48 MP photo is 576 MB as float32, one of its planes 192 MB. The resize treats
            # channels apart anyway, so this gives the whole image's result to the bit (tests/test_detect_memory.py).
            # Interpolation weights sum to 1, so resizing after the mean subtraction equals resizing before it.
            tensor = torch.empty((3, new_h, new_w), device=self.device, dtype=torch.float32)
            for channel in range(3):  # BGR: channel c of the output is plane 2 - c of the RGB input
                plane = rgb[2 - channel].float().sub_(self._mean[channel])
                size = (new_h, new_w)
                tensor[channel] = F.interpolate(plane[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
            return tensor, (width / new_w, height / new_h)
        return rgb.flip(0).float().sub_(self._mean), (1.0, 1.0)

    def _postprocess(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        landmarks: torch.Tensor,
        height: int,
        width: int,
        sizes: Sequence[tuple[int, int]] | None,
        factors: Sequence[tuple[float, float]],
    ) -> list[Detections]:
        """Network outputs (B, P, ·) for an input of height × width -> one ``Detections`` per image, for the whole
        batch at once (see ``curate.detect.postprocess``). ``sizes``: each image's own size when padded."""
        n = len(factors)
        prior, strides = _prior_grid(height, width, self.device)
        scores = torch.softmax(conf[:n].float(), dim=-1)[..., 1]
        if sizes is not None:
            # the cell of a prior starts at (cx, cy) - stride / 2; it exists for the lone image iff it starts inside
            own = torch.tensor(sizes, device=self.device, dtype=torch.float32)
            cell_x, cell_y = prior[:, 0] - strides / 2, prior[:, 1] - strides / 2
            scores = torch.where((cell_y[None] < own[:, :1]) & (cell_x[None] < own[:, 1:]), scores, 0.0)
        best = scores.amax(dim=1)
        best = torch.where(best > self.score_floor, best, 0.0)  # no candidate at all: 0, as with no boxes
        image, anchor = torch.nonzero((scores > self.score_floor) & (scores >= self.report_floor), as_tuple=True)
        face = scores[image, anchor]
        order = sort_by_group_then_score(image, face)
        order = order[rank_in_group(image[order]) < self.top_k]
        image, anchor, face = image[order], anchor[order], face[order]
        boxes, points = decode(loc[image, anchor].float(), landmarks[image, anchor].float(), prior[anchor])
        kept = grouped_nms(boxes, image, self.nms_iou, plus_one=True)
        kept = kept[rank_in_group(image[kept]) < self.keep]
        image = image[kept]
        scale = torch.tensor(factors, device=self.device, dtype=torch.float32)[image]
        boxes = (boxes[kept].reshape(-1, 2, 2) * scale[:, None]).reshape(-1, 4)
        points = (points[kept].reshape(-1, 5, 2) * scale[:, None]).reshape(-1, 10)
        per_image, tops = split_to_host(image, n, (boxes, face[kept], points), best)
        return [
            Detections(boxes=b, scores=f, landmarks=p, best=float(top))
            for (b, f, p), top in zip(per_image, tops, strict=True)
        ]

    def _forward(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue one batch's network work; returns the post-processing that finishes it."""
        if self.max_side is not None:
            prepared, factors = zip(*(self._prepare(image) for image in images), strict=True)
            sizes = [(int(t.shape[1]), int(t.shape[2])) for t in prepared]
        else:  # the common case: pixels go into the batch as they are, with one copy each (see _fill)
            prepared, factors = tuple(images), ((1.0, 1.0),) * len(images)
            sizes = [image_hw(image) for image in images]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        count = len(sizes)
        if self.canvas_step:
            height = width = math.ceil(max(height, width) / self.canvas_step) * self.canvas_step
            count = max(count, min(self.batch_size, next_power_of_two(count)))
        valid = valid_sizes(sizes, height, width, count, self.device)
        batch = self._fill(prepared, count, height, width, valid, already_prepared=self.max_side is not None)
        with full_float32():
            loc, conf, landmarks = self.net(batch, valid)
        own = sizes if valid is not None else None  # only a padded batch has cells that its images lack
        return lambda: self._postprocess(loc, conf, landmarks, height, width, own, factors)

    def _fill(
        self,
        images: Sequence[Image | torch.Tensor],
        count: int,
        height: int,
        width: int,
        valid: torch.Tensor | None,
        already_prepared: bool,
    ) -> torch.Tensor:
        """The network's input batch (count, 3, height, width), channels-last: each image in the top-left corner,
        BGR minus the mean, zero elsewhere. Raw images cost one copy each (uint8 to float on the way); the channel
        flip, the mean and the zeroing are then done once for the whole batch, which saves a few kernel launches
        per image: on a GPU those, not the arithmetic, set the pace."""
        tensors = images if already_prepared else (to_chw(image, self.device) for image in images)
        batch = padded_batch(tensors, count, height, width, self.device, self.dtype)
        if already_prepared:
            return batch
        batch = batch.flip(1) - self._mean
        return PaddingMasks(valid)(batch, 1)

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue the network's work on ``images`` and return the function that finishes it: post-processing,
        which waits for the device. In between, a caller can queue other models' work, so that the device is not
        left idle while the host prepares their inputs."""
        sizes = [image_hw(image) for image in images]
        groups: Sequence[Sequence[int]]
        if self.canvas_step:
            groups = canvas_batches(sizes, self.batch_size, self.canvas_step)
        else:
            groups = size_batches(sizes, self.batch_size, self.max_pad_waste)
        return submit_batches(images, groups, self._forward)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        return self.submit(images)()


def options(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments: original size unless detect.face_max_side caps it; always float32 (see
    `full_float32`, so detect.half does not apply)."""
    return {
        "batch_size": detect.batch_size,
        "report_floor": report_floor(detect),
        "max_side": detect.face_max_side or None,
    }


build = Builder(RetinaFaceDetector, options)

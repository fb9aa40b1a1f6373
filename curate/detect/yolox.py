"""YOLOX (Megvii, COCO 80 classes) in PyTorch, used here as a person detector.

The module tree mirrors the official YOLOX code so that the state dict keys are the official ones
(``backbone.backbone.stem.conv.conv.weight``, ``head.cls_preds.0.weight``, ...): an official release
checkpoint (``{"model": state_dict}``) for nano/tiny/s/m/l/x loads strictly.

Weights can also come from an ONNX export of the official model (e.g. ``yolox_nano_coco_416.onnx``). Such
exports fold every BatchNorm into the preceding conv (the conv gains a bias and the initializers lose their
names), so :func:`state_dict_from_onnx` maps the ONNX ``Conv`` nodes, in graph order, onto the model's convs in
execution order (checking shape, groups and stride of each pair) and writes the folded conv as conv + identity
BatchNorm. Unfused exports (explicit ``BatchNormalization`` nodes) are read as well.

Network facts (official YOLOX): CSPDarknet backbone (Focus stem, four CSP stages, SPP in the last), PAFPN neck,
decoupled head (stem 1x1, two 3x3 convs per branch, cls/reg/obj 1x1 predictions) at strides 8/16/32, SiLU
activations, BatchNorm eps 1e-3. Raw output per anchor point: 4 box terms (xy offsets, log wh, in stride units),
sigmoid objectness, 80 sigmoid class probabilities. Input: BGR, raw 0..255 pixels, letterboxed to the top-left
corner of a square canvas filled with 114.
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
from curate.detect.builder import Builder, Identified, report_floor
from curate.detect.images import Image, image_hw, to_chw
from curate.detect.postprocess import grouped_nms, sort_by_group_then_score, split_to_host
from curate.detect.types import Detections

# variant -> (depth multiplier, width multiplier, depthwise convs, default input size)
VARIANTS: dict[str, tuple[float, float, bool, int]] = {
    "nano": (0.33, 0.25, True, 416),
    "tiny": (0.33, 0.375, False, 416),
    "s": (0.33, 0.50, False, 640),
    "m": (0.67, 0.75, False, 640),
    "l": (1.0, 1.0, False, 640),
    "x": (1.33, 1.25, False, 640),
}
STRIDES = (8, 16, 32)
NUM_CLASSES = 80
PERSON = 0
PAD_VALUE = 114.0
BN_EPS = 1e-3
# a tile's box reaching within this many input pixels of a side of the tile that cuts the image is dropped
CUT_MARGIN = 2.0


def canonical_variant(variant: str) -> str:
    v = variant.lower().removeprefix("yolox").strip("_-")
    if v not in VARIANTS:
        raise ValueError(f"unknown YOLOX variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return v


# --------------------------------------------------------------------------------------------------------------
# Building blocks (attribute names follow the official code: they are the state dict keys)
# --------------------------------------------------------------------------------------------------------------


class BaseConv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU; after :meth:`fuse`, Conv2d (with bias) -> SiLU."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ksize, stride, padding=(ksize - 1) // 2, groups=groups, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the (eval-mode) BatchNorm into the conv."""
        bn = self.bn
        if bn is None:
            return
        old = self.conv
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(
            old.in_channels,
            old.out_channels,
            old.kernel_size,  # type: ignore[arg-type]
            old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            groups=old.groups,
            bias=True,
        ).to(device=old.weight.device, dtype=old.weight.dtype)
        conv.weight.copy_(old.weight * scale[:, None, None, None])
        assert conv.bias is not None
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv = conv
        self.bn = None


class DWConv(nn.Module):
    """Depthwise conv (ksize, stride) followed by a pointwise 1x1 conv."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int) -> None:
        super().__init__()
        self.dconv = BaseConv(cin, cin, ksize, stride, groups=cin)
        self.pconv = BaseConv(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def _conv(cin: int, cout: int, ksize: int, stride: int, depthwise: bool) -> nn.Module:
    return DWConv(cin, cout, ksize, stride) if depthwise else BaseConv(cin, cout, ksize, stride)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, shortcut: bool, expansion: float, depthwise: bool) -> None:
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = BaseConv(cin, hidden, 1, 1)
        self.conv2 = _conv(hidden, cout, 3, 1, depthwise)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Two 1x1 branches; n bottlenecks on the first; concatenated and mixed by a 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        hidden = int(cout * 0.5)
        self.conv1 = BaseConv(cin, hidden, 1, 1)
        self.conv2 = BaseConv(cin, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, cout, 1, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, 1.0, depthwise) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        b = self.conv2(x)
        return self.conv3(torch.cat((self.m(a), b), dim=1))


class SPPBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *[pool(x) for pool in self.m]], dim=1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixel blocks into channels), then a conv."""

    def __init__(self, cin: int, cout: int, ksize: int) -> None:
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, ksize, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl = x[..., ::2, ::2]
        tr = x[..., ::2, 1::2]
        bl = x[..., 1::2, ::2]
        br = x[..., 1::2, 1::2]
        return self.conv(torch.cat((tl, bl, tr, br), dim=1))


class CSPDarknet(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool) -> None:
        super().__init__()
        c = int(width * 64)
        d = max(round(depth * 3), 1)
        self.stem = Focus(3, c, 3)
        self.dark2 = nn.Sequential(_conv(c, c * 2, 3, 2, depthwise), CSPLayer(c * 2, c * 2, d, True, depthwise))
        self.dark3 = nn.Sequential(_conv(c * 2, c * 4, 3, 2, depthwise), CSPLayer(c * 4, c * 4, d * 3, True, depthwise))
        self.dark4 = nn.Sequential(_conv(c * 4, c * 8, 3, 2, depthwise), CSPLayer(c * 8, c * 8, d * 3, True, depthwise))
        self.dark5 = nn.Sequential(
            _conv(c * 8, c * 16, 3, 2, depthwise),
            SPPBottleneck(c * 16, c * 16),
            CSPLayer(c * 16, c * 16, d, False, depthwise),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        c3 = self.dark3(x)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        return c3, c4, c5


class PAFPN(nn.Module):
    """Top-down then bottom-up feature pyramid over dark3/dark4/dark5."""

    def __init__(self, depth: float, width: float, depthwise: bool) -> None:
        super().__init__()
        c3, c4, c5 = (int(ch * width) for ch in (256, 512, 1024))
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise)
        self.bu_conv2 = _conv(c3, c3, 3, 2, depthwise)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise)
        self.bu_conv1 = _conv(c4, c4, 3, 2, depthwise)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f3, f4, f5 = self.backbone(x)
        top5 = self.lateral_conv0(f5)
        p4 = self.C3_p4(torch.cat((self.upsample(top5), f4), dim=1))
        top4 = self.reduce_conv1(p4)
        out3 = self.C3_p3(torch.cat((self.upsample(top4), f3), dim=1))
        out4 = self.C3_n3(torch.cat((self.bu_conv2(out3), top4), dim=1))
        out5 = self.C3_n4(torch.cat((self.bu_conv1(out4), top5), dim=1))
        return out3, out4, out5


class YOLOXHead(nn.Module):
    def __init__(self, width: float, depthwise: bool, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        hid = int(256 * width)
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for ch in (256, 512, 1024):
            self.stems.append(BaseConv(int(ch * width), hid, 1, 1))
            self.cls_convs.append(nn.Sequential(_conv(hid, hid, 3, 1, depthwise), _conv(hid, hid, 3, 1, depthwise)))
            self.reg_convs.append(nn.Sequential(_conv(hid, hid, 3, 1, depthwise), _conv(hid, hid, 3, 1, depthwise)))
            self.cls_preds.append(nn.Conv2d(hid, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hid, 4, 1))
            self.obj_preds.append(nn.Conv2d(hid, 1, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = []
        for k, x in enumerate(feats):
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            reg = self.reg_preds[k](reg_feat)
            obj = self.obj_preds[k](reg_feat)
            outs.append(torch.cat((reg, obj.sigmoid(), cls.sigmoid()), dim=1).flatten(2))
        return torch.cat(outs, dim=2).permute(0, 2, 1)


class YOLOX(nn.Module):
    """Returns the raw (undecoded) head output (N, anchors, 5 + classes), as the official
    ``decode_in_inference=False`` export: xy offsets, log wh, sigmoid objectness, sigmoid class probabilities."""

    def __init__(self, depth: float, width: float, depthwise: bool, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = PAFPN(depth, width, depthwise)
        self.head = YOLOXHead(width, depthwise, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def fuse(self) -> YOLOX:
        """Fold every BatchNorm into its conv (inference only; the state dict no longer has official keys)."""
        for m in self.modules():
            if isinstance(m, BaseConv):
                m.fuse()
        return self


def build_yolox(variant: str = "nano") -> YOLOX:
    depth, width, depthwise, _ = VARIANTS[canonical_variant(variant)]
    return YOLOX(depth, width, depthwise)


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def load_checkpoint(model: YOLOX, path: Path) -> YOLOX:
    """Official YOLOX checkpoint (``{"model": state_dict, ...}`` or a bare state dict), loaded strictly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model


def _conv_execution_order(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d modules in the order a forward pass calls them."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(names[id(mod)]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return order


def state_dict_from_onnx(path: Path, model: YOLOX) -> dict[str, torch.Tensor]:
    """Official-key state dict for ``model`` from the initializers of an ONNX export of the same architecture.

    ONNX ``Conv`` nodes (graph order = export trace order) are paired with the model's convs in execution order;
    each pair must agree in weight shape, groups and stride. A folded conv bias becomes an identity BatchNorm
    (weight sqrt(1 + eps), running var 1, mean 0) with that bias; an explicit BatchNormalization node after the
    conv is copied as is. Initializers that still carry a model key (the head's 1x1 predictions) must land there.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # some exporters store weights as Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]

    order = _conv_execution_order(model)
    if len(order) != len(onnx_convs):
        raise ValueError(f"{path}: {len(onnx_convs)} Conv nodes, but the model has {len(order)} convs (wrong variant?)")
    modules = dict(model.named_modules())
    expected = model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for name, node in zip(order, onnx_convs, strict=True):
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = torch.from_numpy(arrays[node.input[1]].copy())
        bias = torch.from_numpy(arrays[node.input[2]].copy()) if len(node.input) > 2 and node.input[2] else None
        if (
            tuple(weight.shape) != tuple(conv.weight.shape)
            or int(attrs.get("group", 1)) != conv.groups
            or tuple(attrs.get("strides", (1, 1))) != tuple(conv.stride)
        ):
            raise ValueError(
                f"{path}: Conv node {node.name!r} (weight {tuple(weight.shape)}, group {attrs.get('group', 1)}) "
                f"does not match {name} (weight {tuple(conv.weight.shape)}, groups {conv.groups}): wrong variant?"
            )
        for init_name in node.input[1:]:
            if init_name in expected and not init_name.startswith(name + "."):
                raise ValueError(f"{path}: initializer {init_name} would be loaded into {name}")
        parent = name.removesuffix(".conv")
        if parent != name and isinstance(modules.get(parent), BaseConv):
            sd[f"{parent}.conv.weight"] = weight
            out_ch = weight.shape[0]
            bn_nodes = [n for n in consumers.get(node.output[0], []) if n.op_type == "BatchNormalization"]
            if bn_nodes:
                bn = bn_nodes[0]
                if bias is not None:
                    raise ValueError(f"{path}: Conv {node.name!r} has both a bias and a BatchNormalization")
                eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
                scale, shift, mean, var = (torch.from_numpy(arrays[n].copy()) for n in bn.input[1:5])
                var = var + (eps - BN_EPS)  # same normaliser under this model's eps
            else:
                scale = torch.sqrt(torch.ones(out_ch) + BN_EPS)
                shift = bias if bias is not None else torch.zeros(out_ch)
                mean, var = torch.zeros(out_ch), torch.ones(out_ch)
            sd[f"{parent}.bn.weight"] = scale
            sd[f"{parent}.bn.bias"] = shift
            sd[f"{parent}.bn.running_mean"] = mean
            sd[f"{parent}.bn.running_var"] = var
            sd[f"{parent}.bn.num_batches_tracked"] = torch.tensor(0)
        else:
            if bias is None:
                raise ValueError(f"{path}: Conv node {node.name!r} for {name} has no bias")
            sd[f"{name}.weight"] = weight
            sd[f"{name}.bias"] = bias
    return sd


def load_yolox(weights: Path, variant: str = "nano") -> YOLOX:
    """Model with official keys and BatchNorms (unfused), eval mode, on CPU."""
    model = build_yolox(variant).eval()
    weights = Path(weights)
    if weights.suffix.lower() == ".onnx":
        model.load_state_dict(state_dict_from_onnx(weights, model), strict=True)
    else:
        load_checkpoint(model, weights)
    return model


# --------------------------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------------------------


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

    def preprocess(
        self, images: Sequence[Image]
    ) -> tuple[torch.Tensor, list[tuple[int, float, tuple[int, int, int, int] | None]]]:
        """All letterboxed inputs (each image, then its tiles) of ``images`` and, per input, (image index,
        ratio r, crop window (x0, y0, x1, y1) in the image, or None for the full image)."""
        s = self.input_size
        views: list[tuple[int, torch.Tensor, list[tuple[int, int, int, int]]]] = []
        for i, image in enumerate(images):
            h, w = image_hw(image)
            windows = tile_windows(h, w, self.tiles, self.tile_overlap) if max(h, w) > self.tile_min_side else []
            views.append((i, to_chw(image, self.device), windows))
        batch = torch.full((sum(1 + len(w) for _, _, w in views), 3, s, s), PAD_VALUE, device=self.device)
        meta: list[tuple[int, float, tuple[int, int, int, int] | None]] = []
        for i, rgb, windows in views:
            meta.append((i, letterbox(rgb, s, batch[len(meta)]), None))
            if windows and rgb.numel() > CHUNK_ELEMENTS:  # a huge photo: one crop at a time, never a stack of copies
                for window in windows:
                    x0, y0, x1, y1 = window
                    meta.append((i, letterbox(rgb[:, y0:y1, x0:x1], s, batch[len(meta)]), window))
            elif windows:  # a grid's tiles all have one size: one stack, one resize
                crops = torch.stack([rgb[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows])
                r = letterbox(crops, s, batch[len(meta) : len(meta) + len(windows)])
                meta.extend((i, r, window) for window in windows)
        return batch.round_().clamp_(0, 255).flip(1), meta

    def _forward(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue one batch's network work; returns the post-processing that finishes it."""
        batch, meta = self.preprocess(images)
        count = len(batch)
        if self.device.type == "cuda" and count & (count - 1):
            # a new batch count costs cuDNN a plan search on CUDA: pad to a power of two so that few counts recur
            filler = batch.new_full((1 << count.bit_length(), *batch.shape[1:]), PAD_VALUE)
            filler[:count] = batch
            batch = filler
        raw = self.raw_outputs(batch)[:count]
        sizes = [image_hw(image) for image in images]
        return lambda: self._postprocess(raw, meta, sizes)

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
        tiled = {i for i, _, window in meta if window is not None}  # images that got tiles (see tile_min_side)
        return [
            Detections(boxes=b, scores=f, best=float(full), tiles_best=float(tile) if i in tiled else None)
            for i, ((b, f), (full, tile)) in enumerate(zip(per_image, tops.reshape(n, 2), strict=True))
        ]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue the network's work on ``images`` and return the function that finishes it (post-processing,
        which waits for the device); see ``RetinaFaceDetector.submit``."""
        step = self.batch_size
        if self.device.type == "cpu" and self.tiles > 1:
            # With tiles an image makes up to 1 + tiles² inputs. On the CPU a batch of 16 images (160 inputs, 330 MB
            # of canvases) ran at about half the speed of one image at a time (bench/detect.py: 3.8 against 7.1
            # img/s; not profiled), so there a batch holds at most batch_size inputs.
            step = max(1, self.batch_size // (1 + self.tiles**2))
        with torch.inference_mode():
            pending = [self._forward(images[s : s + step]) for s in range(0, len(images), step)]

        def finish() -> list[Detections]:
            with torch.inference_mode():
                return [detections for postprocess in pending for detections in postprocess()]

        return finish

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
    }


build = Builder(YoloxDetector, options)

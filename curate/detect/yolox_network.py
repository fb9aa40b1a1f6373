"""The YOLOX network (Megvii, COCO 80 classes) in PyTorch: its modules, its variants, and BatchNorm folding.

The module tree mirrors the official YOLOX code so that the state dict keys are the official ones
(``backbone.backbone.stem.conv.conv.weight``, ``head.cls_preds.0.weight``, ...): an official release
checkpoint for nano/tiny/s/m/l/x loads strictly (`curate.detect.yolox_weights` reads the weight files).

Network facts (official YOLOX): CSPDarknet backbone (Focus stem, four CSP stages, SPP in the last), PAFPN neck,
decoupled head (stem 1x1, two 3x3 convs per branch, cls/reg/obj 1x1 predictions) at strides 8/16/32, SiLU
activations, BatchNorm eps 1e-3. Raw output per anchor point: 4 box terms (xy offsets, log wh, in stride units),
sigmoid objectness, 80 sigmoid class probabilities. Input: BGR, raw 0..255 pixels (the detector,
`curate.detect.yolox`, letterboxes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from curate.detect.folding import fold_batch_norm

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
BN_EPS = 1e-3


def canonical_variant(variant: str) -> str:
    """The VARIANTS key a variant name means ("yolox_nano", "YOLOX-Nano" and "nano" all mean "nano")."""
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
        """Fold the (eval-mode) BatchNorm into the conv (`curate.detect.folding`); a second call does nothing."""
        if self.bn is not None:
            self.conv = fold_batch_norm(self.conv, self.bn)
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

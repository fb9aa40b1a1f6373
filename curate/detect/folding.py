"""Batch-norm folding: an eval-mode BatchNorm2d after a Conv2d folded into that conv, for inference.

The norm is an affine map per channel, so the conv can apply it itself (weight scaled, bias shifted): one
kernel less per layer. Every detector that folds goes through `fold_batch_norm`, which is torch's own
`fuse_conv_bn_eval`. On the YOLOX-Nano ONNX weights (whose norms are identities carrying the folded bias,
see `curate.detect.yolox_weights`) it gives the export's convs back bit for bit; on real batch-norm statistics
(RetinaFace) results move by float32 rounding only.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A new biased Conv2d computing ``norm(conv(x))``; both must be in eval mode (the running statistics are
    used, as at inference). The inputs are left as they are."""
    return fuse_conv_bn_eval(conv, norm)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Every Conv2d + BatchNorm2d pair of a Sequential inside ``module`` (eval mode) folded into one biased Conv2d,
    in place; the norm becomes an Identity, so that the indices of a checkpoint's layout keep their places.
    Returns ``module``."""
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for index in range(len(sequential) - 1):
            conv, norm = sequential[index], sequential[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequential[index] = fold_batch_norm(conv, norm)
                sequential[index + 1] = nn.Identity()
    return module

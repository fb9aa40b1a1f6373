"""torchvision COCO detectors (Faster R-CNN, RetinaNet, FCOS) as person detectors, at native resolution.

torchvision's detection transform rescales every image so its short side is 800 px (long side at most 1333),
which upsamples typical web photos (500 px) by 1.6x: four times the work. With ``native_resolution`` the
transform keeps each image at its own size and only shrinks images whose long side exceeds ``max_side``;
normalisation, padding to a multiple of 32 and mapping boxes back to original pixels stay torchvision's.

Batching: images in one forward pass are zero-padded to a common size, and features near the bottom/right
image edges depend on how much padding there is. To make results independent of how images are batched,
images are grouped by their padded size (``bucket_by_size``), so each forward holds only images that would be
padded to the same size on their own: batched results equal one-at-a-time results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from curate.config import DetectConfig
from curate.detect.batching import chunks, groups_by_key, run_batches
from curate.detect.builder import Builder, Identified
from curate.detect.images import Image, image_hw, to_chw
from curate.detect.types import Detections

PERSON_LABEL = 1  # torchvision's 91-index COCO scheme (0 = background)

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_resnet50_fpn_v2": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2,
    "fasterrcnn_resnet50_fpn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "retinanet_resnet50_fpn_v2": torchvision.models.detection.retinanet_resnet50_fpn_v2,
    "fcos_resnet50_fpn": torchvision.models.detection.fcos_resnet50_fpn,
}


def native_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """Native size, shrunk (never enlarged) so the long side is at most max_side."""
    if max_side and max(h, w) > max_side:
        r = max_side / max(h, w)
        return max(1, round(h * r)), max(1, round(w * r))
    return h, w


class NativeResolutionTransform(GeneralizedRCNNTransform):
    """torchvision's transform without the resize to min_size/max_size: images keep their own size, except that
    a long side over ``max_side`` is shrunk to it (bilinear, antialiased)."""

    def __init__(self, base: GeneralizedRCNNTransform, max_side: int | None) -> None:
        super().__init__(
            base.min_size,  # type: ignore[arg-type]
            base.max_size,
            base.image_mean,
            base.image_std,
            size_divisible=base.size_divisible,
            fixed_size=base.fixed_size,
        )
        self.max_side = max_side

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        h, w = image.shape[-2:]
        nh, nw = native_size(int(h), int(w), self.max_side)
        if (nh, nw) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        if target is not None and "boxes" in target:
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=image.device)
            target = {**target, "boxes": target["boxes"] * scale}
        return image, target

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(native resolution, max_side={self.max_side})"


def person_only(output: dict[str, torch.Tensor], score_floor: float = 0.0) -> Detections:
    """Keep the person-class (label 1) boxes and scores of one torchvision detection output, best first."""
    keep = (output["labels"] == PERSON_LABEL) & (output["scores"] > score_floor)
    scores = output["scores"][keep].float()
    order = torch.argsort(scores, descending=True)
    return Detections(
        boxes=output["boxes"][keep].float()[order].cpu().numpy().astype(np.float32).reshape(-1, 4),
        scores=scores[order].cpu().numpy().astype(np.float32),
    )


def _load_state_dict(model: nn.Module, path: Path) -> None:
    """torchvision's released weights (a bare state dict, or {"model": ...}). Released weights of some
    architectures were saved with FrozenBatchNorm2d (no ``num_batches_tracked``), while a model built without
    weights has BatchNorm2d; those counters are the only keys allowed to be missing."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:5]}..., unexpected keys {unexpected[:5]}...")


class TorchvisionPersonDetector(Identified):
    """Person boxes and scores from a torchvision COCO detector, in original pixel coordinates.

    ``weights``: a torchvision state dict file; None builds a randomly initialised model (tests, timing).
    ``native_resolution``: run each image at its own size (shrinking only beyond ``max_side``) instead of
    torchvision's 800 px short side. ``half``: float16 autocast, on CUDA only (the weights stay float32).
    """

    version = "1"
    tiles = 1  # no tiles: check_detectors refuses detect.person_tiles > 1 for these

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"person_label": PERSON_LABEL}

    def __init__(
        self,
        arch: str = "fasterrcnn_resnet50_fpn_v2",
        weights: Path | None = None,
        device: str | torch.device = "cpu",
        score_floor: float = 0.05,
        batch_size: int = 8,
        native_resolution: bool = True,
        half: bool = False,
        max_side: int | None = 1333,
        bucket_by_size: bool = True,
    ) -> None:
        self._identify(locals())
        if arch not in ARCHS:
            raise ValueError(f"unknown torchvision detector {arch!r}; expected one of {sorted(ARCHS)}")
        self.name = arch
        self.device = torch.device(device)
        self.score_floor = score_floor
        self.batch_size = max(1, batch_size)
        self.native_resolution = native_resolution
        self.half = half and self.device.type == "cuda"
        self.max_side = max_side
        self.bucket_by_size = bucket_by_size

        model: Any = ARCHS[arch](weights=None, weights_backbone=None)
        if weights is not None:
            _load_state_dict(model, Path(weights))
        if hasattr(model, "roi_heads"):  # Faster R-CNN
            model.roi_heads.score_thresh = score_floor
        else:  # RetinaNet, FCOS
            model.score_thresh = score_floor
        if native_resolution:
            model.transform = NativeResolutionTransform(model.transform, max_side)
        self.model = model.to(self.device).eval()

    def model_input_size(self, h: int, w: int) -> tuple[int, int]:
        """Size the model's transform gives an h x w image (before padding)."""
        if self.native_resolution:
            return native_size(h, w, self.max_side)
        t = self.model.transform
        scale = min(t.min_size[-1] / min(h, w), t.max_size / max(h, w))
        return math.floor(h * scale), math.floor(w * scale)

    def _bucket(self, image: Image) -> tuple[int, int]:
        h, w = self.model_input_size(*image_hw(image))
        d = self.model.transform.size_divisible
        return math.ceil(h / d) * d, math.ceil(w / d) * d

    def _to_tensor(self, image: Image) -> torch.Tensor:
        return to_chw(image, self.device).float().div_(255.0)

    @torch.inference_mode()
    def _forward(self, images: Sequence[Image]) -> list[Detections]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            outputs = self.model([self._to_tensor(im) for im in images])
        return [person_only(o, self.score_floor) for o in outputs]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """No queueing of its own: the work runs when the result is asked for (``detect``)."""
        return lambda: self.detect(images)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        groups: Sequence[Sequence[int]]
        if self.bucket_by_size:  # a forward pass holds only images of one padded size (see the module docstring)
            buckets = groups_by_key(self._bucket(image) for image in images)
            groups = [chunk for bucket in buckets.values() for chunk in chunks(bucket, self.batch_size)]
        else:
            groups = chunks(range(len(images)), self.batch_size)
        return run_batches(images, groups, self._forward)


def options(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments (the architecture is the registry entry's), at native resolution."""
    return {"batch_size": detect.batch_size, "half": detect.half}


build = Builder(TorchvisionPersonDetector, options)

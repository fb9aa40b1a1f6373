"""What detectors return: raw boxes and scores in the input image's own pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Detections:
    """Boxes (N, 4) as x1, y1, x2, y2 in pixels of the original image; scores (N,) in [0, 1];
    landmarks (N, 10) as five (x, y) points for face detectors, else None."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray | None = None

    @property
    def max_score(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    def count_above(self, threshold: float) -> int:
        return int((self.scores > threshold).sum())


class Detector(Protocol):
    """Batched: one call per batch, images of any sizes (H, W, 3) RGB uint8."""

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

"""What detectors return: raw boxes and scores in the input image's own pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# the detect stage stores, per detector, how many boxes score above this
COUNT_ABOVE = 0.5
# At most this many boxes per image and detector are stored in the manifest (best first).
MAX_BOXES = 100


@dataclass
class Detections:
    """Boxes (N, 4) as x1, y1, x2, y2 in pixels of the original image; scores (N,) in [0, 1];
    landmarks (N, 10) as five (x, y) points for face detectors, else None.

    ``best``: the image's highest score, when a detector returns only its boxes above a reporting floor
    (None: the best of ``scores``). ``tiles_best``: for a person detector that also looked at tiles of the
    image, the best score found on the tiles alone (``best`` then covers the full view only)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray | None = None
    best: float | None = None
    tiles_best: float | None = None

    @property
    def max_score(self) -> float:
        if self.best is not None:
            return self.best
        return float(self.scores.max()) if len(self.scores) else 0.0

    def count_above(self, threshold: float) -> int:
        return int((self.scores > threshold).sum())


class Detector(Protocol):
    """Batched: one call per batch, images of any sizes (H, W, 3) RGB uint8."""

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

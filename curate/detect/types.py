"""What detectors return: raw boxes and scores in the input image's own pixel coordinates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    image, the best score found on the tiles alone (``best`` then covers the full view only), and
    ``tiles_looked`` how many of its tiles it looked at."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray | None = None
    best: float | None = None
    tiles_best: float | None = None
    # how many tiles were looked at (detect.tile_policy=auto looks at some only); None: not a tiling detector
    tiles_looked: int | None = None

    @property
    def max_score(self) -> float:
        if self.best is not None:
            return self.best
        return float(self.scores.max()) if len(self.scores) else 0.0

    def count_above(self, threshold: float) -> int:
        return int((self.scores > threshold).sum())


class Detector(Protocol):
    """What the detect stage runs (`curate.stages.detect.Scorer`): batched, one call per batch, images of any sizes
    (H, W, 3) RGB uint8 (or `curate.detect.images`' tensors). Built by its registry entry's builder
    (`curate.models.registry`); `curate.detect.builder.Identified` implements `identity`."""

    name: str
    # The side of the grid of tiles it scores besides the full view (1: none). Above 1 it sets
    # `Detections.tiles_best`, stored as `<family>_<name>_tiles_max` (curate.manifest.tiles_scored agrees).
    tiles: int

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

    def submit(self, images: Sequence[np.ndarray]) -> Callable[[], list[Detections]]:
        """Queue the work on `images` and return what finishes it (waiting for the device), so that a caller can
        queue other models' work in between; ``submit(images)()`` equals ``detect(images)``."""
        ...

    def identity(self) -> dict[str, Any]:
        """Everything that shapes its outputs: class, version, effective arguments, constants, weights' sha256."""
        ...


@runtime_checkable
class LooksAtTilesLater(Protocol):
    """A tiling detector that can look at its full views first and at its tiles afterwards (detect.tile_policy=auto):
    `curate.stages.detect.Scorer` then skips the tiles of images another model's full view already decides."""

    tile_policy: str

    def submit_views(self, images: Sequence[Any]) -> Callable[[], Any]:
        """Queue the full views; the function returned waits for them and gives what `submit_tiles` takes, whose
        ``best`` holds each image's full-view score."""
        ...

    def submit_tiles(self, views: Any, decided: Sequence[bool]) -> Callable[[], list[Detections]]:
        """Queue the tiles worth looking at of the images not ``decided``; the function returned finishes every
        image's detections."""
        ...

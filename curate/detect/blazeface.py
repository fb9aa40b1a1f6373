"""BlazeFace full range (MediaPipe's ``face_detection_full_range_sparse.tflite``): faces down to a few pixels
across, in photos and in paintings, batched.

The network is the TFLite graph run by `curate.detect.tflite_network`. Pre- and post-processing follow
MediaPipe's graph configs ``face_detection_full_range.pbtxt`` and ``face_detection.pbtxt``:

- input: the whole image letterboxed into 192 × 192, centred, zero border (``ImageToTensorCalculator``,
  keep_aspect_ratio, BORDER_ZERO; see `curate.detect.mediapipe_crops`), values scaled to [-1, 1];
- anchors: one layer at stride 4 (48 × 48 cells), one anchor per cell (interpolated_scale_aspect_ratio 0),
  offset 0.5, fixed size;
- decoding: scale 192, box then 6 keypoints (x before y), sigmoid score with the logit clipped to ±100;
- MediaPipe's min_score_thresh is 0.6 (``score_floor`` here); weighted NMS at IoU 0.3, as MediaPipe's.

``Detections.best`` is the image's top anchor score, also when it is below ``score_floor``; boxes are in the
original image's pixels. The six keypoints (eyes, nose, mouth, ears) do not fit ``Detections.landmarks``'
five points, so landmarks stay None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from curate.detect.batching import chunks, submit_batches
from curate.detect.builder import Builder, Identified, batch_and_floor
from curate.detect.images import Image, image_hw
from curate.detect.mediapipe_crops import letterbox_batch, to_image
from curate.detect.mediapipe_ssd import SsdSpec, anchor_centres, decode, weighted_nms
from curate.detect.postprocess import split_to_host
from curate.detect.tflite_network import TfliteNetwork, load_network
from curate.detect.types import Detections

# face_detection_full_range.pbtxt (FaceDetectionOptions) and face_detection.pbtxt (SsdAnchorsCalculator,
# TensorsToDetectionsCalculator)
FULL_RANGE = SsdSpec(input_size=192, strides=(4,), interpolated_scale_aspect_ratio=0.0, num_keypoints=6, scale=192.0)
INPUT_RANGE = (-1.0, 1.0)  # ImageToTensorCalculator output_tensor_float_range
MIN_SCORE = 0.6  # FaceDetectionOptions min_score_thresh of the full-range graph
NMS_IOU = 0.3  # NonMaxSuppressionCalculator min_suppression_threshold


def to_range(batch: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Pixel values 0..255 -> [low, high], as ``ImageToTensorCalculator``'s value transformation."""
    return batch * ((high - low) / 255.0) + low


class BlazeFaceDetector(Identified):
    """Face boxes and scores from BlazeFace full range, in original pixel coordinates, sorted by score.

    ``score_floor``: the lowest face score returned as a box (MediaPipe's own is 0.6); ``report_floor``, as the
    other detectors': boxes below it are not returned either (NMS never lets a lower box suppress a higher one).
    ``batch_size`` images share one forward pass (each is letterboxed to 192 × 192, so they always stack).
    """

    name = "blazeface_full"
    version = "1"
    tiles = 1

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"spec": asdict(FULL_RANGE), "input_range": INPUT_RANGE}

    def __init__(
        self,
        weights: Path,
        device: str | torch.device = "cpu",
        score_floor: float = 0.5,
        nms_iou: float = NMS_IOU,
        report_floor: float = 0.0,
        batch_size: int = 32,
    ) -> None:
        self._identify(locals())
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(device)
        self.net: TfliteNetwork = load_network(weights, self.device)
        expected = (1, FULL_RANGE.input_size, FULL_RANGE.input_size, 3)
        if self.net.input_shape != expected:
            raise ValueError(f"{weights}: input {self.net.input_shape}, expected {expected} (BlazeFace full range)")
        self.centres = anchor_centres(FULL_RANGE, self.device)
        self.score_floor = score_floor
        self.nms_iou = nms_iou
        self.report_floor = report_floor
        self.batch_size = batch_size

    @torch.inference_mode()
    def raw_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's (boxes (N, 2304, 16), score logits (N, 2304, 1)) for inputs (N, 3, 192, 192) in [-1, 1]."""
        boxes, logits = self.net(batch.to(self.device, torch.float32))
        return boxes, logits

    def _forward(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue one batch's network work; returns the post-processing that finishes it."""
        batch, rects = letterbox_batch(images, FULL_RANGE.input_size, self.device)
        raw = self.raw_outputs(to_range(batch, *INPUT_RANGE))
        sizes = [image_hw(image) for image in images]
        return lambda: self._postprocess(*raw, rects, sizes)

    def _postprocess(
        self, raw_boxes: torch.Tensor, logits: torch.Tensor, rects: torch.Tensor, sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Raw outputs of a batch -> one ``Detections`` per image, with a single transfer to the host."""
        boxes, keypoints, scores = decode(raw_boxes, logits, self.centres, FULL_RANGE)
        best = scores.amax(dim=1)
        floor = max(self.score_floor, self.report_floor)
        image, score, box, _ = weighted_nms(boxes, keypoints, scores, floor, self.nms_iou)
        corners = to_image(box.reshape(-1, 2, 2), rects[image, None])
        own = torch.tensor(sizes, device=self.device, dtype=torch.float32)[image][:, None, [1, 0]]
        corners = torch.minimum(corners.clamp(min=0.0), own)  # (h, w) -> (x, y) limits
        per_image, tops = split_to_host(image, len(sizes), (corners.reshape(-1, 4), score), best)
        return [Detections(boxes=b, scores=s, best=float(top)) for (b, s), top in zip(per_image, tops, strict=True)]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue the network's work on ``images`` and return the function that finishes it (post-processing,
        which waits for the device); see `curate.detect.batching.submit_batches`."""
        return submit_batches(images, chunks(range(len(images)), self.batch_size), self._forward)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        return self.submit(images)()


build = Builder(BlazeFaceDetector, batch_and_floor)

"""Hands, MediaPipe's way: palms (BlazePalm, ``palm_detection_full.tflite``), then a hand-landmark network
(``hand_landmark_full.tflite``) on a rotated crop around each palm, whose hand-presence score says whether a
hand is really there. The palm detector alone fires on animals and food at low scores; the presence check on the
crop is what keeps those out.

Both networks are TFLite graphs run by `curate.detect.tflite_network`. The steps follow MediaPipe's graph
configs:

- ``palm_detection_cpu.pbtxt``: the whole image letterboxed into 192 × 192 (centred, zero border), values in
  [0, 1]; anchors at strides 8, 16, 16, 16 with interpolated_scale_aspect_ratio 1 (2 anchors per cell at
  stride 8, 6 at stride 16: 24²·2 + 12²·6 = 2016), offset 0.5, fixed size; decoding with scale 192, a box and
  7 keypoints (x before y), sigmoid score with the logit clipped to ±100; weighted NMS at IoU 0.3 (the boxes
  and keypoints of the palms each survivor suppresses are blended into it). MediaPipe keeps palms scoring
  >= 0.5; ``palm_floor`` (default 0.1) goes lower, which also blends more candidates into each palm;
- ``palm_detection_detection_to_roi.pbtxt``: the palm's box becomes a rectangle rotated so that keypoint 0
  (wrist centre) to keypoint 2 (middle finger MCP) points up (target angle 90°), shifted by -0.5 of its height
  along that direction, squared to its long side and scaled by 2.6;
- ``hand_landmark_cpu.pbtxt``: that rectangle sampled into 224 × 224 (border replicated: the default border
  mode), values in [0, 1]; the network's second output is the hand-presence score, a probability already (the
  graph ends in LOGISTIC), which MediaPipe holds to 0.5.

``Detections``: per image, the palms' boxes in original pixels with their crops' hand-presence scores, best
first; ``best`` is the best presence (0 with no palm above the floor).

One step of MediaPipe's Hands solution is left out on purpose: its tracking graph
(``hand_landmark_tracking_cpu.pbtxt``, ``AssociationNormRectCalculator`` at 0.5) drops a hand rectangle that
overlaps a later, lower-scoring palm's rectangle by IoU > 0.5, so only one crop of a cluster is scored. Here
every palm's crop is scored. Against MediaPipe 0.10.21 itself on the dev set (219 images): at palm floor 0.5
the flagged images are the same; at 0.1 this flags 6 more human images (50 against 44 of 114), and no
no_human image in either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from curate.detect.batching import chunks, submit_batches
from curate.detect.builder import RANDOM_INIT, Builder, Identified, batch_and_floor
from curate.detect.images import Image, image_hw, to_chw
from curate.detect.mediapipe_crops import crops, letterbox_batch, normalize_radians, to_image
from curate.detect.mediapipe_ssd import SsdSpec, anchor_centres, decode, weighted_nms
from curate.detect.postprocess import sort_by_group_then_score, split_to_host
from curate.detect.tflite_network import TfliteNetwork, load_network
from curate.detect.types import Detections
from curate.models.registry import REGISTRY, file_digest, joined

# palm_detection_cpu.pbtxt: SsdAnchorsCalculator and TensorsToDetectionsCalculator options
PALM = SsdSpec(
    input_size=192, strides=(8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0, num_keypoints=7, scale=192.0
)
NMS_IOU = 0.3  # NonMaxSuppressionCalculator min_suppression_threshold
# palm_detection_detection_to_roi.pbtxt: DetectionsToRectsCalculator and RectTransformationCalculator options
WRIST, MIDDLE_MCP = 0, 2  # rotation_vector_start / end_keypoint_index
TARGET_ANGLE = math.pi / 2  # rotation_vector_target_angle_degrees: 90
ROI_SCALE = 2.6  # scale_x = scale_y
ROI_SHIFT_Y = -0.5  # shift_y (shift_x 0), in units of the rectangle's height, along its rotated y axis
# hand_landmark_cpu.pbtxt
CROP_SIZE = 224
PRESENCE_OUTPUT = 1  # SplitTensorVectorCalculator: landmarks, hand flag, handedness, world landmarks
# The landmark network's file, kept beside the palm model's (models.dir, the cache): the registry's name for it.
LANDMARK_FILE = REGISTRY["mediapipe_hands"].extra[0].filename


def palm_rects(boxes: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Palm boxes (M, 4) x1, y1, x2, y2 and keypoints (M, 7, 2), in image pixels -> the hand crops' rectangles
    (M, 5) cx, cy, w, h, rotation (see the module docstring)."""
    start, end = keypoints[:, WRIST], keypoints[:, MIDDLE_MCP]
    # y grows downwards in the image: the angle is measured with y flipped, as MediaPipe's ComputeRotation does
    angle = normalize_radians(TARGET_ANGLE - torch.atan2(-(end[:, 1] - start[:, 1]), end[:, 0] - start[:, 0]))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - height * ROI_SHIFT_Y * torch.sin(angle)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + height * ROI_SHIFT_Y * torch.cos(angle)
    side = torch.maximum(width, height) * ROI_SCALE
    return torch.stack([cx, cy, side, side, angle], dim=1)


class HandDetector(Identified):
    """Palm boxes scored by hand presence, in original pixel coordinates (see the module docstring).

    ``weights``: the palm detection model; ``landmark_weights``: the hand landmark model (default: the file
    ``mediapipe_hand_landmark_full.tflite`` beside ``weights``). ``palm_floor``: palms scoring below it get no
    crop; ``max_palms``: at most this many palms per image (the best ones) get one, which bounds the landmark
    work on an image where the palm detector fires everywhere. ``report_floor``: boxes whose presence is below
    it are not returned (``best`` still gives the top presence). ``batch_size`` images share the palm pass; all
    their crops go through the landmark network together, in passes of at most ``crop_batch`` crops.
    """

    name = "mediapipe_hands"
    version = "1"
    tiles = 1
    # landmark_weights is a path, like weights left out of the parameters: its digest is in weights_of
    speed_only = frozenset({"device", "batch_size", "crop_batch", "landmark_weights"})

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {
            "palm": asdict(PALM),
            "rotation_keypoints": (WRIST, MIDDLE_MCP),
            "target_angle": TARGET_ANGLE,
            "roi_scale": ROI_SCALE,
            "roi_shift_y": ROI_SHIFT_Y,
            "crop_size": CROP_SIZE,
            "presence_output": PRESENCE_OUTPUT,
        }

    @classmethod
    def weights_of(cls, bound: Mapping[str, Any]) -> str:
        """Both models' digests: the palm model's, then the landmark model's."""
        weights = bound.get("weights")
        if weights is None:
            return RANDOM_INIT
        landmark = _landmark_path(Path(weights), bound.get("landmark_weights"))
        return joined([file_digest(Path(weights)), file_digest(landmark)])

    def __init__(
        self,
        weights: Path,
        landmark_weights: Path | None = None,
        device: str | torch.device = "cpu",
        palm_floor: float = 0.1,
        nms_iou: float = NMS_IOU,
        max_palms: int = 10,
        report_floor: float = 0.0,
        batch_size: int = 16,
        crop_batch: int = 32,
    ) -> None:
        self._identify(locals())
        if batch_size < 1 or crop_batch < 1 or max_palms < 1:
            raise ValueError("batch_size, crop_batch and max_palms must be >= 1")
        self.device = torch.device(device)
        self.palm_net: TfliteNetwork = load_network(weights, self.device)
        self.landmark_net: TfliteNetwork = load_network(_landmark_path(Path(weights), landmark_weights), self.device)
        for net, size, what in ((self.palm_net, PALM.input_size, "palm"), (self.landmark_net, CROP_SIZE, "landmark")):
            if net.input_shape != (1, size, size, 3):
                raise ValueError(f"{what} model: input {net.input_shape}, expected (1, {size}, {size}, 3)")
        self.centres = anchor_centres(PALM, self.device)
        self.palm_floor = palm_floor
        self.nms_iou = nms_iou
        self.max_palms = max_palms
        self.report_floor = report_floor
        self.batch_size = batch_size
        self.crop_batch = crop_batch

    @torch.inference_mode()
    def palm_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The palm network's (boxes (N, 2016, 18), score logits (N, 2016, 1)) for inputs (N, 3, 192, 192)
        in [0, 1]."""
        boxes, logits = self.palm_net(batch.to(self.device, torch.float32))
        return boxes, logits

    @torch.inference_mode()
    def presence(self, crops_batch: torch.Tensor) -> torch.Tensor:
        """Hand presence (K,) of crops (K, 3, 224, 224) in [0, 1], in passes of at most ``crop_batch``."""
        parts = [
            self.landmark_net(crops_batch[start : start + self.crop_batch])[PRESENCE_OUTPUT].reshape(-1)
            for start in range(0, len(crops_batch), self.crop_batch)
        ]
        return torch.cat(parts) if parts else crops_batch.new_zeros(0)

    def palms(
        self, raw_boxes: torch.Tensor, logits: torch.Tensor, rects: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's palms above the floor, after NMS and the per-image cap: (image index (M,), palm score (M,),
        box (M, 4) and keypoints (M, 7, 2) in image pixels), by image then palm score."""
        boxes, keypoints, scores = decode(raw_boxes, logits, self.centres, PALM)
        image, score, box, points = weighted_nms(
            boxes, keypoints, scores, self.palm_floor, self.nms_iou, self.max_palms
        )
        letterbox = rects[image]
        corners = to_image(box.reshape(-1, 2, 2), letterbox[:, None])
        return image, score, corners.reshape(-1, 4), to_image(points, letterbox[:, None])

    def hand_crops(self, images: Sequence[Image], image: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
        """The crops (M, 3, 224, 224) in [0, 1] of the rectangles ``rects`` (M, 5) of images ``image`` (M,):
        one sampling per image, for all of its palms (``image`` is sorted)."""
        out = torch.empty((len(image), 3, CROP_SIZE, CROP_SIZE), device=self.device)
        counts = torch.bincount(image, minlength=len(images)).tolist()  # the one host sync before the crops
        start = 0
        for i, count in enumerate(counts):
            if count:
                rgb = to_chw(images[i], self.device)
                out[start : start + count] = crops(rgb, rects[start : start + count], CROP_SIZE, replicate=True)
            start += count
        return out.div_(255.0)

    def _forward(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue one batch's palm pass; returns what finishes it (palms, crops, landmark pass, transfer)."""
        batch, rects = letterbox_batch(images, PALM.input_size, self.device)
        raw = self.palm_outputs(batch.div_(255.0))
        return lambda: self._finish(images, *raw, rects)

    @torch.inference_mode()
    def _finish(
        self, images: Sequence[Image], raw_boxes: torch.Tensor, logits: torch.Tensor, rects: torch.Tensor
    ) -> list[Detections]:
        n = len(images)
        image, _, boxes, points = self.palms(raw_boxes, logits, rects)
        presence = self.presence(self.hand_crops(images, image, palm_rects(boxes, points)))
        best = torch.zeros(n, device=self.device).scatter_reduce_(0, image, presence, "amax")
        reported = presence >= self.report_floor
        image, boxes, presence = image[reported], boxes[reported], presence[reported]
        order = sort_by_group_then_score(image, presence)
        image, boxes, presence = image[order], boxes[order], presence[order]
        own = torch.tensor([image_hw(x) for x in images], device=self.device, dtype=torch.float32)
        limits = own[image][:, [1, 0, 1, 0]]  # (h, w) -> x, y, x, y limits
        boxes = torch.minimum(boxes.clamp(min=0.0), limits)
        per_image, tops = split_to_host(image, n, (boxes, presence), best)
        return [Detections(boxes=b, scores=s, best=float(top)) for (b, s), top in zip(per_image, tops, strict=True)]

    def submit(self, images: Sequence[Image]) -> Callable[[], list[Detections]]:
        """Queue the palm network's work on ``images`` and return the function that finishes it: the palms'
        selection waits for the device, then the crops and the landmark pass run and the results come over in
        one transfer per batch (see `curate.detect.batching.submit_batches`)."""
        return submit_batches(images, chunks(range(len(images)), self.batch_size), self._forward)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        return self.submit(images)()


def _landmark_path(weights: Path, landmark: Path | str | None) -> Path:
    return Path(landmark) if landmark is not None else weights.with_name(LANDMARK_FILE)


build = Builder(HandDetector, batch_and_floor)

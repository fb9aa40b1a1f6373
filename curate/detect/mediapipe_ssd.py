"""Anchors and decoding of MediaPipe's single-shot detectors (BlazeFace, BlazePalm), batched.

Facts from MediaPipe's graph configs and calculators (``SsdAnchorsCalculator``, ``TensorsToDetectionsCalculator``):

- anchors: for each run of equal strides, a feature map of ceil(input / stride) cells, row-major; per cell one
  anchor per aspect ratio and layer of the run, plus one if ``interpolated_scale_aspect_ratio`` > 0; centre
  ((col + 0.5) / width, (row + 0.5) / height). With ``fixed_anchor_size`` (both models) every anchor is 1 × 1,
  so only the centres matter.
- decoding, with ``reverse_output_order`` (x before y): centre = raw[0:2] / scale · anchor size + anchor
  centre, size = raw[2:4] / scale · anchor size, keypoint k = raw[4 + 2k : 6 + 2k] / scale + anchor centre;
  all normalised to the input tensor. Score = sigmoid(clip(logit, ±score_clipping_thresh)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision

from curate.detect.postprocess import rank_in_group, sort_by_group_then_score


@dataclass(frozen=True)
class SsdSpec:
    """The options of a model's ``SsdAnchorsCalculator`` and ``TensorsToDetectionsCalculator`` nodes that shape
    its outputs (the ones left out are the same for both models: fixed 1 × 1 anchors, aspect ratio 1)."""

    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_keypoints: int
    scale: float  # x_scale = y_scale = w_scale = h_scale
    score_clipping: float = 100.0
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)

    def per_cell(self, run: int) -> int:
        """Anchors per cell of a feature map made by ``run`` layers of one stride."""
        return run * (len(self.aspect_ratios) + (1 if self.interpolated_scale_aspect_ratio > 0 else 0))


def anchor_centres(spec: SsdSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchor centres (A, 2) as normalised x, y, in the models' output order."""
    centres = []
    layer = 0
    while layer < len(spec.strides):
        run = 1
        while layer + run < len(spec.strides) and spec.strides[layer + run] == spec.strides[layer]:
            run += 1
        cells = -(-spec.input_size // spec.strides[layer])
        steps = (torch.arange(cells, dtype=torch.float32) + spec.anchor_offset) / cells
        y, x = torch.meshgrid(steps, steps, indexing="ij")
        grid = torch.stack([x, y], dim=-1).reshape(-1, 1, 2)
        centres.append(grid.expand(-1, spec.per_cell(run), 2).reshape(-1, 2))
        layer += run
    return torch.cat(centres).to(device)


def decode(
    raw_boxes: torch.Tensor, raw_scores: torch.Tensor, centres: torch.Tensor, spec: SsdSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs (N, A, 4 + 2K) and (N, A, 1) -> boxes (N, A, 4) as x1, y1, x2, y2, keypoints (N, A, K, 2)
    as x, y, all normalised to the input tensor, and scores (N, A) in [0, 1]."""
    if raw_boxes.shape[1] != centres.shape[0]:
        raise ValueError(f"{raw_boxes.shape[1]} anchors in the output, {centres.shape[0]} expected")
    centre = raw_boxes[..., 0:2] / spec.scale + centres
    half = raw_boxes[..., 2:4] / spec.scale / 2
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    n, a = raw_boxes.shape[:2]
    points = raw_boxes[..., 4 : 4 + 2 * spec.num_keypoints].reshape(n, a, spec.num_keypoints, 2)
    keypoints = points / spec.scale + centres[None, :, None, :]
    scores = torch.sigmoid(raw_scores[..., 0].clamp(-spec.score_clipping, spec.score_clipping))
    return boxes, keypoints, scores


def weighted_nms(
    boxes: torch.Tensor,
    keypoints: torch.Tensor,
    scores: torch.Tensor,
    floor: float,
    iou: float,
    keep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MediaPipe's weighted NMS (``NonMaxSuppressionCalculator``, algorithm WEIGHTED) over a whole batch.

    Candidates are the anchors scoring >= ``floor`` (the decoder's min_score_thresh). MediaPipe takes the best
    remaining candidate, gathers every remaining one whose IoU with it exceeds ``iou`` (itself included), and
    outputs the best one's score with the score-weighted mean of the gathered boxes and keypoints. Which
    candidates survive is exactly greedy NMS (one `torchvision.ops.batched_nms` call, images kept apart); each
    candidate is gathered by the first survivor, in score order, that overlaps it by more than ``iou`` (a
    candidate that such a survivor did not take was taken earlier, by an earlier one that overlaps it).

    Inputs (N, A, 4) x1, y1, x2, y2, (N, A, K, 2) and (N, A); returns, by image then score descending and at
    most ``keep`` per image: image index (M,), score (M,), box (M, 4) and keypoints (M, K, 2).
    """
    image, anchor = torch.nonzero(scores >= floor, as_tuple=True)
    score, box, points = scores[image, anchor], boxes[image, anchor].float(), keypoints[image, anchor].float()
    if len(image) == 0:  # (nonzero has synchronised already: this costs nothing more)
        return image, score, box, points
    survivors = torchvision.ops.batched_nms(box, score.float(), image, iou)
    survivors = survivors[sort_by_group_then_score(image[survivors], score[survivors])]
    if keep is not None:
        survivors = survivors[rank_in_group(image[survivors]) < keep]
    # each candidate's gatherer: the first survivor of its image that overlaps it by more than iou (none: a
    # candidate that only a survivor past the cap would have taken, dropped with it)
    overlaps = (torchvision.ops.box_iou(box, box[survivors]) > iou) & (image[:, None] == image[survivors][None, :])
    # a survivor gathers itself even when its box is empty (an IoU of 0 with itself)
    overlaps[survivors, torch.arange(len(survivors), device=box.device)] = True
    gathered = overlaps.any(dim=1)
    head = overlaps.int().argmax(dim=1)[gathered]  # argmax gives the first of equal maxima
    weight = score[gathered].float()
    count = len(survivors)
    total = weight.new_zeros(count).index_add_(0, head, weight)
    blended_box = box.new_zeros((count, 4)).index_add_(0, head, box[gathered] * weight[:, None])
    flat = points[gathered].reshape(len(weight), -1)
    blended_points = flat.new_zeros((count, flat.shape[1])).index_add_(0, head, flat * weight[:, None])
    blended_box = blended_box / total[:, None]
    blended_points = (blended_points / total[:, None]).reshape(count, *keypoints.shape[2:])
    return image[survivors], score[survivors], blended_box, blended_points

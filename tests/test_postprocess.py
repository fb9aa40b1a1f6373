"""Whole-batch post-processing (`curate.detect.postprocess`) against image-by-image torchvision NMS, and the
detectors' reporting floor against no floor on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import MODELS, REPO, SHARED
from PIL import Image

from curate.detect import postprocess
from curate.detect.postprocess import grouped_nms, rank_in_group, sort_by_group_then_score, split_to_host
from curate.detect.retinaface import RetinaFaceDetector
from curate.detect.yolox import YoloxDetector

RETINAFACE = MODELS / "retinaface_mobilenet0.25_Final.pth"
YOLOX = MODELS / "yolox_nano_coco_416.onnx"
SAMPLE = REPO / "curate" / "sample_data" / "images"
DEV = SHARED / "evalsets" / "dev" / "images"


def random_candidates(seed: int, groups: int, per_group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clustered boxes (so that NMS has work to do), with some exactly tied scores."""
    rng = np.random.default_rng(seed)
    n = groups * per_group
    centres = rng.uniform(0, 160, (n, 2)) // 40 * 40 + rng.normal(0, 6, (n, 2))
    sizes = rng.uniform(10, 60, (n, 2))
    boxes = torch.tensor(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), dtype=torch.float32)
    scores = torch.tensor(rng.choice(rng.uniform(0, 1, n // 2), n), dtype=torch.float32)  # pairs of equal scores
    group = torch.tensor(rng.integers(0, groups, n))
    return boxes, scores, group


def reference(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float, plus_one: bool):
    """Per group: the kept (box, score) pairs, by image-by-image torchvision NMS over the group's boxes in the
    stable score order."""
    out = {}
    for g in groups.unique().tolist():
        members = torch.nonzero(groups == g).squeeze(1)
        members = members[torch.sort(-scores[members].double(), stable=True).indices]
        b = boxes[members] + (boxes.new_tensor([0, 0, 1, 1]) if plus_one else 0)
        rank = -torch.arange(len(members), dtype=torch.float32)
        kept = members[torchvision.ops.nms(b, rank, iou)]
        out[g] = (boxes[kept].numpy(), scores[kept].numpy())
    return out


@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("chunk", [postprocess.NMS_CHUNK, 37])
def test_grouped_nms_equals_nms_image_by_image(monkeypatch, plus_one: bool, chunk: int) -> None:
    monkeypatch.setattr(postprocess, "NMS_CHUNK", chunk)  # 37: many calls, each of whole groups or a lone group
    boxes, scores, groups = random_candidates(seed=1, groups=9, per_group=60)
    order = sort_by_group_then_score(groups, scores)
    boxes, scores, groups = boxes[order], scores[order], groups[order]
    assert torch.all(groups[1:] >= groups[:-1])
    kept = grouped_nms(boxes, groups, 0.4, plus_one=plus_one)
    assert torch.all(kept[1:] > kept[:-1]), "kept indices come back in the given order"
    expected = reference(boxes, scores, groups, 0.4, plus_one)
    assert 0 < len(kept) < len(boxes) * 0.8, "the clusters must give NMS something to suppress"
    for g, (b, s) in expected.items():
        mine = kept[groups[kept] == g]
        np.testing.assert_array_equal(boxes[mine].numpy(), b)
        np.testing.assert_array_equal(scores[mine].numpy(), s)


def test_groups_never_suppress_each_other() -> None:
    box = torch.tensor([[10.0, 10, 50, 50]])
    boxes = box.repeat(3, 1)
    kept = grouped_nms(boxes, torch.tensor([0, 1, 2]), 0.4)
    assert kept.tolist() == [0, 1, 2]
    assert grouped_nms(boxes, torch.tensor([0, 0, 2]), 0.4).tolist() == [0, 2]
    assert grouped_nms(boxes[:0], torch.tensor([], dtype=torch.long), 0.4).numel() == 0


def test_rank_and_split() -> None:
    groups = torch.tensor([0, 0, 0, 2, 2, 3])
    assert rank_in_group(groups).tolist() == [0, 1, 2, 0, 1, 0]
    values = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    parts, best = split_to_host(groups, 5, (values, values[:, 0]), torch.tensor([0.5, 0, 0.25, 1, 0]))
    assert best.tolist() == [0.5, 0, 0.25, 1, 0]
    assert [len(p[1]) for p in parts] == [3, 0, 2, 1, 0]
    np.testing.assert_array_equal(parts[2][0], [[6, 7], [8, 9]])
    assert parts[1][0].shape == (0, 2) and parts[3][1].tolist() == [10.0]


def photos(names: list[str]) -> list[np.ndarray]:
    out = []
    for name in names:
        path = SAMPLE / name if (SAMPLE / name).exists() else DEV / name
        if not path.exists():
            pytest.skip(f"{name} not found")
        with Image.open(path) as image:
            out.append(np.asarray(image.convert("RGB")))
    return out


# faces, many people, animals that fire the face detector weakly, a scene without anyone
NAMES = ["df_selfie-many-people.jpg", "df_couple.jpg", "caffe_cat.jpg", "u2n_horse.jpg", "dps_in54.jpg"]


def assert_same_above(floor: float, low: list, high: list) -> None:
    for a, b in zip(low, high, strict=True):
        above = a.scores >= floor
        assert b.max_score == pytest.approx(a.max_score, abs=1e-6)
        assert b.count_above(0.5) == a.count_above(0.5)
        np.testing.assert_array_equal(b.scores, a.scores[above])
        np.testing.assert_array_equal(b.boxes, a.boxes[above])
        if a.landmarks is not None:
            np.testing.assert_array_equal(b.landmarks, a.landmarks[above])


@pytest.mark.skipif(not RETINAFACE.exists(), reason="RetinaFace weights not found")
def test_retinaface_report_floor_changes_no_box_above_it() -> None:
    images = photos(NAMES)
    everything = RetinaFaceDetector(RETINAFACE, batch_size=8).detect(images)
    floored = RetinaFaceDetector(RETINAFACE, batch_size=8, report_floor=0.1).detect(images)
    assert sum(len(d.scores) for d in everything) > 3 * sum(len(d.scores) for d in floored), "the floor must bite"
    assert any(0 < d.max_score < 0.1 for d in everything) or any(len(d.scores) == 0 for d in floored)
    assert_same_above(0.1, everything, floored)


@pytest.mark.skipif(not YOLOX.exists(), reason="YOLOX-Nano weights not found")
def test_yolox_report_floor_changes_no_box_above_it() -> None:
    images = photos(NAMES)
    everything = YoloxDetector(YOLOX, tiles=2, batch_size=8).detect(images)
    floored = YoloxDetector(YOLOX, tiles=2, batch_size=8, report_floor=0.3).detect(images)
    assert sum(len(d.scores) for d in everything) > sum(len(d.scores) for d in floored)
    assert_same_above(0.3, everything, floored)

"""Person detectors: YOLOX in PyTorch against onnxruntime on the official Nano weights, and torchvision detectors
at native resolution (random weights: no pretrained torchvision weights are available offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from curate.detect.tiling import cut_by_window, cutting_sides, tile_windows
from curate.detect.types import Detections
from curate.detect.yolox import YoloxDetector
from curate.detect.yolox_network import VARIANTS, build_yolox
from curate.detect.yolox_weights import load_yolox, state_dict_from_onnx

# torch on two threads for this module (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_threads")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ONNX = SHARED / "models" / "yolox_nano_coco_416.onnx"
DEV = SHARED / "evalsets" / "dev" / "images"

needs_onnx = pytest.mark.skipif(not ONNX.exists(), reason=f"YOLOX-Nano ONNX weights not found at {ONNX}")
needs_dev = pytest.mark.skipif(not DEV.is_dir(), reason=f"dev photos not found at {DEV}")


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(DEV / name).convert("RGB"))


@pytest.fixture(scope="module")
def nano() -> YoloxDetector:
    if not ONNX.exists():
        pytest.skip(f"YOLOX-Nano ONNX weights not found at {ONNX}")
    return YoloxDetector(ONNX)


# --------------------------------------------------------------------------------------------------------------
# YOLOX architecture and weights
# --------------------------------------------------------------------------------------------------------------

# Parameter counts from the official YOLOX model zoo table (millions).
OFFICIAL_PARAMS_M = {"nano": 0.91, "tiny": 5.06, "s": 9.0, "m": 25.3, "l": 54.2, "x": 99.1}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_sizes_and_official_keys(variant):
    with torch.device("meta"):
        model = build_yolox(variant)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(OFFICIAL_PARAMS_M[variant], rel=0.01)
    keys = model.state_dict().keys()
    for key in (
        "backbone.backbone.stem.conv.conv.weight",
        "backbone.backbone.stem.conv.bn.running_var",
        "backbone.backbone.dark2.1.m.0.conv1.conv.weight",
        "backbone.backbone.dark5.1.conv2.bn.weight",  # SPP
        "backbone.backbone.dark5.2.conv3.conv.weight",
        "backbone.lateral_conv0.conv.weight",
        "backbone.C3_n4.m.0.conv1.bn.bias",
        "head.stems.2.conv.weight",
        "head.cls_preds.0.bias",
        "head.obj_preds.2.weight",
    ):
        assert key in keys
    depthwise = VARIANTS[variant][2]
    assert ("backbone.bu_conv1.dconv.conv.weight" in keys) == depthwise
    assert ("backbone.bu_conv1.conv.weight" in keys) == (not depthwise)


@needs_onnx
def test_onnx_loader_keeps_named_head_weights():
    import onnx
    from onnx import numpy_helper

    model = load_yolox(ONNX, "nano")
    named = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(ONNX)).graph.initializer if t.name[:5] == "head."}
    assert len(named) == 18
    sd = model.state_dict()
    for key, value in named.items():
        np.testing.assert_array_equal(sd[key].numpy(), value)


@needs_onnx
def test_onnx_of_another_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        state_dict_from_onnx(ONNX, build_yolox("tiny"))


@needs_onnx
@needs_dev
def test_pytorch_matches_onnxruntime_on_photos(nano):
    import onnxruntime as ort

    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    unfused = load_yolox(ONNX, "nano")
    for name in ("dn_person.jpg", "caffe_cat.jpg", "dlib_mmod_cars_test_image.jpg"):
        batch, _ = nano.preprocess([photo(name)])
        assert batch.shape == (1, 3, 416, 416)
        ref = session.run(None, {"images": batch.numpy()})[0]
        assert ref.shape == (1, 3549, 85)
        with torch.no_grad():
            ours_bn = unfused(batch).numpy()
        ours_fused = nano.raw_outputs(batch).numpy()
        assert np.abs(ours_bn - ref).max() < 1e-3, name
        assert np.abs(ours_fused - ref).max() < 1e-3, name


@needs_onnx
def test_official_checkpoint_format_loads(tmp_path, nano):
    """An official-style checkpoint ({"model": state_dict}) loads strictly and gives the same detections."""
    ckpt = tmp_path / "yolox_nano.pth"
    torch.save({"model": load_yolox(ONNX, "nano").state_dict(), "start_epoch": 300}, ckpt)
    from_pth = YoloxDetector(ckpt, variant="nano")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    a, b = nano.detect([image])[0], from_pth.detect([image])[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)

    sd = load_yolox(ONNX, "nano").state_dict()
    del sd["head.obj_preds.1.bias"]
    torch.save({"model": sd}, ckpt)
    with pytest.raises(RuntimeError, match="obj_preds"):
        YoloxDetector(ckpt, variant="nano")


# --------------------------------------------------------------------------------------------------------------
# YOLOX detector on real photos
# --------------------------------------------------------------------------------------------------------------


@needs_onnx
@needs_dev
def test_finds_people_and_not_a_cat(nano):
    names = ["dn_person.jpg", "caffe_fish-bike.jpg", "fr_obama3.jpg", "u2n_track-runners-hurdles-1280.jpg"]
    images = [photo(n) for n in names]
    results = nano.detect([*images, photo("caffe_cat.jpg")])
    for name, image, det in zip(names, images, results, strict=False):
        assert det.max_score > 0.5, name
        h, w = image.shape[:2]
        assert (det.boxes[:, [0, 1]] >= 0).all() and (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()
        assert (det.scores[:-1] >= det.scores[1:]).all()
    assert results[-1].max_score < 0.3
    # darknet's person.jpg: the person stands left of centre, full height of the picture.
    x1, y1, x2, y2 = results[0].boxes[0]
    assert abs(x1 - 188) < 8 and abs(y1 - 97) < 8 and abs(x2 - 276) < 8 and abs(y2 - 371) < 8


@needs_onnx
@needs_dev
def test_tiles_find_small_distant_people(nano):
    tiled = YoloxDetector(ONNX, tiles=2)
    images = [photo("dps_in54.jpg"), photo("dlib_mmod_cars_test_image.jpg")]
    single, tiles = nano.detect(images), tiled.detect(images)
    for s, t in zip(single, tiles, strict=True):
        assert t.count_above(0.3) >= s.count_above(0.3)
        # the full view's own score is kept apart from the tiles' (each has its own threshold)
        assert t.max_score == pytest.approx(s.max_score, abs=1e-4)
        assert s.tiles_best is None and t.tiles_best is not None
    # a rider on a forest boardwalk: missed by the full-image pass, found on a tile
    assert single[0].max_score < 0.3 < tiles[0].tiles_best
    assert tiles[0].count_above(0.3) >= 1
    # an image too small for tiles (tile_min_side) has no tile score, rather than a score of 0
    small = YoloxDetector(ONNX, tiles=2, tile_min_side=10_000).detect(images[:1])[0]
    assert small.tiles_best is None and small.max_score == pytest.approx(single[0].max_score, abs=1e-4)


def test_tile_windows_cover_with_overlap():
    assert tile_windows(400, 600, 1) == []
    wins = tile_windows(400, 600, 2, overlap=0.2)
    assert len(wins) == 4
    assert {(w[0], w[1]) for w in wins} == {(0, 0), (x := wins[1][0], 0), (0, y := wins[2][1]), (x, y)}
    tw, th = wins[0][2], wins[0][3]
    assert wins[-1][2:] == (600, 400)
    assert tw - x == pytest.approx(0.2 * tw, abs=2) and th - y == pytest.approx(0.2 * th, abs=2)
    boxes = torch.tensor([[10.0, 10, 50, 50], [300, 10, 340, 50], [10, 200, 50, 240]])
    window = (0, 0, 340, 240)
    assert cutting_sides(window, (400, 600)) == (False, False, True, True)
    cut = cut_by_window(
        boxes,
        torch.tensor([window] * 3).float(),
        torch.tensor([cutting_sides(window, (400, 600))] * 3),
        torch.full((3,), 2.0),
    )
    assert cut.tolist() == [False, True, True]
    # a side on the image's border never cuts, however close the box
    assert cutting_sides((0, 0, 600, 400), (400, 600)) == (False,) * 4


@needs_onnx
@needs_dev
def test_batched_equals_one_at_a_time():
    names = ["dn_person.jpg", "caffe_cat.jpg", "dps_in54.jpg", "u2n_hockey.png", "fr_obama3.jpg"]
    images = [photo(n) for n in names]
    images.append(np.asarray(Image.fromarray(images[0]).convert("L")))  # grayscale (H, W)
    batched = YoloxDetector(ONNX, tiles=2, batch_size=4).detect(images)
    single = YoloxDetector(ONNX, tiles=2, batch_size=1).detect(images)
    assert len(batched) == len(images)
    for a, b in zip(batched, single, strict=True):
        assert isinstance(a, Detections)
        assert a.boxes.shape == b.boxes.shape and a.boxes.dtype == np.float32
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)


# --------------------------------------------------------------------------------------------------------------
# torchvision detectors
# --------------------------------------------------------------------------------------------------------------


def _tv(**kwargs):
    from curate.detect.torchvision_person import TorchvisionPersonDetector

    torch.manual_seed(0)
    det = TorchvisionPersonDetector(weights=None, **kwargs)
    if hasattr(det.model, "rpn"):
        det.model.rpn._post_nms_top_n["testing"] = 64  # random weights, small test: fewer proposals, faster
    return det


def test_torchvision_runs_at_native_resolution():
    det = _tv()
    images, _ = det.model.transform([torch.rand(3, 375, 500)])
    assert images.image_sizes == [(375, 500)]
    assert tuple(images.tensors.shape) == (1, 3, 384, 512)  # padded to a multiple of 32, not resized
    assert det.model_input_size(375, 500) == (375, 500)

    default = _tv(native_resolution=False)
    images, _ = default.model.transform([torch.rand(3, 375, 500)])
    assert images.image_sizes == [(800, 1066)]  # torchvision's own behaviour, for contrast
    assert default.model_input_size(375, 500) == (800, 1066)

    capped = _tv(max_side=250)
    images, _ = capped.model.transform([torch.rand(3, 375, 500)])
    assert images.image_sizes == [(188, 250)]  # shrunk, never enlarged


class _KnownRoiHeads(nn.Module):
    """Stands in for the box head: per image, a person box over the whole (transformed) image and a car box
    (COCO label 3) over its top-left quarter, both in the transformed image's coordinates."""

    def forward(self, features, proposals, image_shapes, targets=None):
        out = []
        for h, w in image_shapes:
            boxes = torch.tensor([[0.0, 0.0, w, h], [0.0, 0.0, w / 2, h / 2]])
            out.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "scores": torch.tensor([0.9, 0.95])})
        return out, {}


def test_torchvision_keeps_persons_in_original_coordinates():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8), rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)]
    for max_side in (None, 200):  # native, and shrunk inside the model
        det = _tv(max_side=max_side)
        det.model.roi_heads = _KnownRoiHeads()
        results = det.detect(images)
        for image, res in zip(images, results, strict=True):
            h, w = image.shape[:2]
            assert res.scores.tolist() == pytest.approx([0.9])  # the car is dropped
            np.testing.assert_allclose(res.boxes, [[0, 0, w, h]], atol=1e-3)


def test_person_only_filter():
    from curate.detect.torchvision_person import person_only

    output = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 8], [3, 3, 9, 9]]),
        "labels": torch.tensor([1, 18, 1, 1]),
        "scores": torch.tensor([0.3, 0.99, 0.8, 0.04]),
    }
    det = person_only(output, score_floor=0.05)
    assert det.scores.tolist() == pytest.approx([0.8, 0.3])
    np.testing.assert_array_equal(det.boxes, [[2, 2, 8, 8], [0, 0, 10, 10]])
    assert person_only({k: v[:0] for k, v in output.items()}).boxes.shape == (0, 4)


def test_torchvision_batched_equals_one_at_a_time():
    det = _tv(score_floor=0.0)
    with torch.no_grad():  # random weights rarely say "person": favour it so there is something to compare
        det.model.roi_heads.box_predictor.cls_score.bias[1] += 6.0
    rng = np.random.default_rng(1)
    sizes = [(96, 128), (90, 120), (128, 96), (96, 128), (64, 64)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    batched = det.detect(images)
    det.batch_size = 1
    single = det.detect(images)
    assert sum(len(d.scores) for d in single) > 0
    for a, b in zip(batched, single, strict=True):
        assert a.boxes.shape == b.boxes.shape
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"])
def test_other_torchvision_archs_build_and_run(arch):
    det = _tv(arch=arch, score_floor=0.0)
    assert det.name == arch
    images, _ = det.model.transform([torch.rand(3, 375, 500)])
    assert images.image_sizes == [(375, 500)]
    out = det.detect([np.zeros((64, 96, 3), np.uint8)])
    assert len(out) == 1 and out[0].boxes.shape[1] == 4


@needs_onnx
@needs_dev
def test_huge_photos_are_resized_plane_by_plane_to_the_same_inputs(monkeypatch):
    """Memory on 48 MP photos: above CHUNK_ELEMENTS the image is resized one plane at a time and its tiles one at a
    time. The letterboxed inputs, and so every score, are exactly those of the one-stack path."""
    import curate.detect.batching as batching

    tiled = YoloxDetector(ONNX, tiles=3, tile_min_side=0)
    image = np.ascontiguousarray(np.tile(photo("dps_in54.jpg"), (2, 3, 1)))  # a larger, non-square photo
    stacked, meta = tiled.preprocess([image])
    monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 1000)
    chunked, chunked_meta = tiled.preprocess([image])
    assert meta == chunked_meta and torch.equal(stacked, chunked)

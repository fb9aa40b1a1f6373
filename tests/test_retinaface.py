"""RetinaFace detectors on real photos: PASS's MobileNet-0.25 with its published weights, and the ResNet-50 one
from the `retina-face` package (randomly initialised: its weights cannot be fetched here) against the
package's own single-image path."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MODELS, REPO, SHARED
from PIL import Image

from curate.detect.batching import size_batches
from curate.detect.retinaface import (
    NUM_PARAMETERS,
    RetinaFaceDetector,
    RetinaFaceMobileNet,
    load_network,
    priors,
)
from curate.detect.types import Detections

# torch on two threads for this module (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_threads")

WEIGHTS = MODELS / "retinaface_mobilenet0.25_Final.pth"
SAMPLE = REPO / "curate" / "sample_data" / "images"
DEV = SHARED / "evalsets" / "dev" / "images"

# Face counts (score > 0.5) checked by eye on drawn boxes and landmarks; every face is clear (score > 0.9).
FACES = {
    "df_selfie-many-people.jpg": 6,  # six faces; the two cut-off faces in the bottom-left corner are not found
    "u2n_coach-yelling-at-athlete-716268.jpg": 1,  # a profile; the helmeted player is not found
    "dlib_000288_00470387.jpg": 1,
    "df_dataset_img1.jpg": 1,
    "df_couple.jpg": 2,
    "fr_biden2.jpg": 2,  # the face, and a false "face" on the tie (0.69)
}
NO_FACES = ["caffe_cat.jpg", "sam_groceries.jpg", "u2n_horse.jpg", "dn_horses.jpg"]


def load(name: str) -> np.ndarray:
    for folder in (SAMPLE, DEV):
        if (folder / name).exists():
            with Image.open(folder / name) as image:
                return np.asarray(image.convert("RGB"))
    pytest.skip(f"{name} is in neither {SAMPLE} nor {DEV}")


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    if not WEIGHTS.exists():
        pytest.skip(f"PASS's RetinaFace weights are not at {WEIGHTS} (see shared/models/README-retinaface_*.md)")
    return RetinaFaceDetector(WEIGHTS)


@pytest.fixture(scope="module")
def found(detector: RetinaFaceDetector) -> dict[str, Detections]:
    """Every test photo that exists here, through one batched call."""
    names = [n for n in [*FACES, *NO_FACES] if (SAMPLE / n).exists() or (DEV / n).exists()]
    return dict(zip(names, detector.detect([load(n) for n in names]), strict=True))


def check_known_faces(found: dict[str, Detections], name: str) -> None:
    if name not in found:
        pytest.skip(f"{name} is not available")
    detections = found[name]
    assert detections.count_above(0.5) == FACES[name], (name, detections.scores[:8])
    assert detections.max_score > 0.99, (name, detections.max_score)


# --------------------------------------------------------------------------------------------- MobileNet-0.25


def test_checkpoint_loads_strictly_and_has_the_published_size() -> None:
    if not WEIGHTS.exists():
        pytest.skip(f"weights not at {WEIGHTS}")
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert sum(t.numel() for t in state.values()) == NUM_PARAMETERS == 433_343  # incl. BN statistics
    net = load_network(WEIGHTS)  # strict=True inside
    assert sum(p.numel() for p in net.parameters()) == 426_608  # the learnable part
    assert set(net.state_dict()) == set(state)
    assert not net.training


@pytest.mark.parametrize("name", list(FACES))
def test_finds_the_faces_it_should(found: dict[str, Detections], name: str) -> None:
    check_known_faces(found, name)
    detections = found[name]
    height, width = load(name).shape[:2]
    assert list(detections.scores) == sorted(detections.scores, reverse=True)
    assert detections.boxes.shape == (len(detections.scores), 4) and detections.boxes.dtype == np.float32
    assert detections.landmarks is not None and detections.landmarks.shape == (len(detections.scores), 10)
    for box, score, points in zip(
        detections.boxes, detections.scores, detections.landmarks.reshape(-1, 5, 2), strict=True
    ):
        if score < 0.9:
            continue
        x1, y1, x2, y2 = box
        assert 8 < x2 - x1 < width and 8 < y2 - y1 < height
        assert -0.1 * width < x1 < x2 < 1.1 * width and -0.1 * height < y1 < y2 < 1.1 * height
        # five points inside the box (10 % slack: a profile's nose tip sticks out)
        margin_x, margin_y = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
        assert np.all((points[:, 0] > x1 - margin_x) & (points[:, 0] < x2 + margin_x)), (name, box, points)
        assert np.all((points[:, 1] > y1 - margin_y) & (points[:, 1] < y2 + margin_y)), (name, box, points)
        # eyes above the mouth corners
        assert max(points[0, 1], points[1, 1]) < min(points[3, 1], points[4, 1])


@pytest.mark.parametrize("name", NO_FACES)
def test_no_face_on_photos_without_people(found: dict[str, Detections], name: str) -> None:
    if name not in found:
        pytest.skip(f"{name} is not available")
    assert found[name].max_score < 0.5, found[name].scores[:5]


def test_a_zero_leaky_relu_slope_fails_the_known_good_checks(found: dict[str, Detections]) -> None:
    """The checkpoint also loads strictly into a net with ReLU (slope 0); the checks above must catch that."""
    slope_zero = RetinaFaceDetector(WEIGHTS)
    slope_zero.net = load_network(WEIGHTS, slope=0.0).to(memory_format=torch.channels_last)
    names = ["df_selfie-many-people.jpg", "u2n_coach-yelling-at-athlete-716268.jpg"]
    wrong = dict(zip(names, slope_zero.detect([load(n) for n in names]), strict=True))
    for name in names:
        check_known_faces(found, name)
        with pytest.raises(AssertionError):
            check_known_faces(wrong, name)
    # the profile face: 0.997 with slope 0.1, 0.06 with ReLU
    assert wrong["u2n_coach-yelling-at-athlete-716268.jpg"].max_score < 0.5


def test_batched_equals_one_at_a_time(detector: RetinaFaceDetector) -> None:
    selfie, couple, cat = load("df_selfie-many-people.jpg"), load("df_couple.jpg"), load("caffe_cat.jpg")
    images = [
        selfie,  # 604 x 600
        couple[5:610, 17:1000],  # faces near the right and bottom edges once padded
        cat,  # 360 x 480
        selfie[:301, :457],  # odd sizes: the last cell of each level is partial
        selfie[250:, :333],  # portrait, a face at the bottom edge
        couple[:397, 500:],  # landscape, a face against the left edge
    ]
    batched_detector = RetinaFaceDetector(WEIGHTS, batch_size=4, max_pad_waste=float("inf"))
    batched_detector.net = detector.net
    assert [len(g) for g in size_batches([im.shape[:2] for im in images], 4, float("inf"))] == [4, 2]
    batched = batched_detector.detect(images)
    assert sum(d.count_above(0.5) for d in batched) >= 10
    for image, together in zip(images, batched, strict=True):
        alone = detector.detect([image])[0]
        keep = alone.scores > 0.05
        assert together.count_above(0.05) == int(keep.sum()), (image.shape, alone.scores, together.scores)
        np.testing.assert_allclose(together.scores[keep], alone.scores[keep], atol=1e-4)
        np.testing.assert_allclose(together.boxes[keep], alone.boxes[keep], atol=0.05)
        assert together.landmarks is not None and alone.landmarks is not None
        np.testing.assert_allclose(together.landmarks[keep], alone.landmarks[keep], atol=0.05)


def test_results_come_back_in_input_order(detector: RetinaFaceDetector) -> None:
    cat, face = load("caffe_cat.jpg"), load("dlib_000288_00470387.jpg")
    results = detector.detect([cat, face, cat[:200, :200], face])
    assert [r.count_above(0.5) for r in results] == [0, 1, 0, 1]
    assert detector.detect([]) == []


def test_max_side_maps_boxes_back_to_original_pixels(detector: RetinaFaceDetector) -> None:
    image = load("df_couple.jpg")  # 713 x 1024
    large = np.asarray(Image.fromarray(image).resize((2048, 1426), Image.Resampling.BILINEAR))
    shrunk = RetinaFaceDetector(WEIGHTS, max_side=1024)
    shrunk.net = detector.net
    big, small = shrunk.detect([large])[0], detector.detect([image])[0]
    assert big.count_above(0.5) == small.count_above(0.5) == 2
    np.testing.assert_allclose(big.boxes[:2] / 2, small.boxes[:2], atol=6)
    assert big.landmarks is not None and small.landmarks is not None
    np.testing.assert_allclose(big.landmarks[:2] / 2, small.landmarks[:2], atol=6)


def test_grey_and_rgba_input(detector: RetinaFaceDetector) -> None:
    face = load("dlib_000288_00470387.jpg")
    rgba = np.concatenate([face, np.full((*face.shape[:2], 1), 255, np.uint8)], axis=2)
    grey = np.asarray(Image.fromarray(face).convert("L"))
    results = detector.detect([rgba, grey])
    assert [r.count_above(0.5) for r in results] == [1, 1]
    with pytest.raises(ValueError, match="uint8"):
        detector.detect([face.astype(np.float32)])


def test_priors_match_the_network_output_layout() -> None:
    net = RetinaFaceMobileNet().eval()
    with torch.inference_mode():
        loc, conf, landmarks = net(torch.zeros(1, 3, 100, 150))
    prior = priors(100, 150, "cpu")
    assert loc.shape == (1, len(prior), 4) and conf.shape == (1, len(prior), 2) and landmarks.shape[-1] == 10
    assert len(prior) == 2 * (13 * 19 + 7 * 10 + 4 * 5)
    # stride 8 first, row-major, two anchor sizes per cell; centres at (j + 0.5) * stride
    assert prior[:3].tolist() == [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]]
    assert prior[-1].tolist() == [4.5 * 32, 3.5 * 32, 512, 512]


# --------------------------------------------------------------------------------------------- ResNet-50


@pytest.fixture(scope="module")
def r50() -> Iterator[tuple[Any, Any]]:
    """The package's network, randomly initialised (seeded) with batch-norm statistics and score scale that make
    padding, thresholds and NMS matter; plus the package's own detection module."""
    pytest.importorskip("cv2")
    pytest.importorskip("retinaface")
    from curate.detect.retinaface_r50 import RetinaFaceR50Detector

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPFACE_BACKEND_ENGINE", "pytorch")
        package = importlib.import_module("retinaface.RetinaFace")
    torch.manual_seed(0)
    detector = RetinaFaceR50Detector(None, score_floor=0.55, allow_upscaling=False, max_pad_waste=float("inf"))
    generator = torch.Generator().manual_seed(1)
    net: Any = detector.net
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        # the first batch norm normalises raw 0..255 RGB, so padding zeros do not stay zero after it
        net.bn_data.running_mean.copy_(torch.tensor([120.0, 115.0, 100.0]))
        net.bn_data.running_var.copy_(torch.tensor([3600.0, 3500.0, 3800.0]))
        for head in (net.face_rpn_stride32, net.face_rpn_stride16, net.face_rpn_stride8):
            head.cls_score.weight.mul_(10)
    yield detector, package


def small(name: str, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(load(name)).resize(size, Image.Resampling.BILINEAR))


def package_result(package: Any, image: np.ndarray, detector: Any, upscale: bool) -> Detections:
    found = package.detect_faces(
        image[:, :, ::-1].copy(), threshold=detector.score_floor, model=detector.net, allow_upscaling=upscale
    )
    faces = list(found.values())
    return Detections(
        boxes=np.array([f["facial_area"] for f in faces], np.float32).reshape(-1, 4),
        scores=np.array([f["score"] for f in faces], np.float32),
        landmarks=np.array([[c for point in f["landmarks"].values() for c in point] for f in faces], np.float32),
    )


def assert_same_as_package(ours: Detections, theirs: Detections) -> None:
    assert len(ours.scores) == len(theirs.scores) > 0
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
    # the package truncates boxes to whole pixels
    assert np.abs(np.floor(ours.boxes) - theirs.boxes).max() <= 1
    assert ours.landmarks is not None and theirs.landmarks is not None
    np.testing.assert_allclose(ours.landmarks, theirs.landmarks.reshape(-1, 10), atol=0.01)


def test_r50_forward_is_the_package_forward(r50: tuple[Any, Any]) -> None:
    from curate.detect.retinaface_r50 import forward

    detector, _ = r50
    image = torch.from_numpy(small("df_couple.jpg", (203, 141)).astype(np.float32))[None]
    with torch.inference_mode():
        theirs = detector.net(image)
        ours = [t.permute(0, 2, 3, 1) for level in forward(detector.net, image.permute(0, 3, 1, 2)) for t in level]
    assert len(ours) == len(theirs) == 9
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_r50_batched_equals_the_package_single_image_path(r50: tuple[Any, Any]) -> None:
    detector, package = r50
    images = [
        small("df_couple.jpg", (320, 223)),
        small("df_selfie-many-people.jpg", (250, 251)),
        small("caffe_cat.jpg", (240, 180)),
        small("dlib_000288_00470387.jpg", (150, 150)),
    ]
    batched = detector.detect(images)
    for image, ours in zip(images, batched, strict=True):
        assert_same_as_package(ours, package_result(package, image, detector, upscale=False))


def test_r50_resizing_matches_the_package(r50: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's resize rule with small limits (short side 128, long side at most 300) so that this stays fast:
    up-scaling, and the long-side cap."""
    detector, package = r50
    preprocess = importlib.import_module("retinaface.commons.preprocess")
    resize = preprocess.resize_image
    monkeypatch.setattr(preprocess, "resize_image", lambda img, scales, allow: resize(img, [128, 300], allow))
    monkeypatch.setattr(detector, "target_short_side", 128)
    monkeypatch.setattr(detector, "max_side", 300)
    monkeypatch.setattr(detector, "allow_upscaling", True)
    images = [small("caffe_cat.jpg", (150, 100)), small("df_couple.jpg", (320, 223)), small("u2n_horse.jpg", (200, 60))]
    batched = detector.detect(images)
    for image, ours in zip(images, batched, strict=True):
        assert_same_as_package(ours, package_result(package, image, detector, upscale=True))


def test_r50_builds_without_weights_and_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("retinaface")
    from curate.detect.retinaface_r50 import RetinaFaceR50Detector

    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("tried to download weights")

    weight_utils = importlib.import_module("retinaface.commons.weight_utils")
    monkeypatch.setattr(weight_utils, "download_weights_if_necessary", no_download)
    detector = RetinaFaceR50Detector(None)
    assert detector.name == "retinaface_r50"
    assert sum(p.numel() for p in detector.net.parameters()) == 29_442_342

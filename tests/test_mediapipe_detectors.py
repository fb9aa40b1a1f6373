"""The MediaPipe detectors on real photos: BlazeFace full range and the palm + hand-landmark pipeline. A batch
gives what each image gives alone, the lone hand that the COCO detectors miss is found, clear faces score high,
and the hand crops' landmark outputs equal the TFLite runtime's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_mediapipe_tflite import (
    FACE_FILE,
    LANDMARK_FILE,
    PALM_FILE,
    PHOTOS,
    RELATIVE,
    models_present,
    photos,
    runtime_outputs,
)

from curate.detect.blazeface import BlazeFaceDetector
from curate.detect.hands import HandDetector, palm_rects
from curate.detect.mediapipe_crops import letterbox_batch
from curate.detect.types import Detections

# torch on two threads for this module (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_threads")

LONE_HAND = "mmp_freihand_00032915.jpg"
CLEAR_FACES = ["df_dataset_img1.jpg", "fr_obama_and_biden.jpg", "df_couple.jpg"]
NO_HUMAN = ["caffe_cat.jpg", "dn_horses.jpg"]


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return dict(zip(PHOTOS, photos(), strict=True))


@pytest.fixture(scope="module")
def faces() -> BlazeFaceDetector:
    models_present(FACE_FILE)
    return BlazeFaceDetector(FACE_FILE, batch_size=4)


@pytest.fixture(scope="module")
def hands() -> HandDetector:
    models_present(PALM_FILE, LANDMARK_FILE)
    return HandDetector(PALM_FILE, batch_size=4, crop_batch=8)


def assert_same(batched: Detections, alone: Detections, score_tolerance: float = 1e-5) -> None:
    """Equal up to float32 rounding: a batch's convolutions may sum in another order than a lone image's."""
    assert batched.best == pytest.approx(alone.best, abs=score_tolerance)
    assert batched.boxes.shape == alone.boxes.shape
    np.testing.assert_allclose(batched.scores, alone.scores, atol=score_tolerance)
    np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-2)


# Hand presence moves more: the palm's keypoints place and turn the crop, whose pixels are rounded to whole
# values (as MediaPipe's uint8 warp does), so a rounding-sized shift of a keypoint can move a pixel by one level.
# Measured on 55 dev images, batch of 8 against alone: presence up to 6.4e-4 apart, faces up to 4.2e-7.
TOLERANCE = {"faces": 1e-5, "hands": 2e-3}


@pytest.mark.parametrize("which", ["faces", "hands"])
def test_batch_equals_one_image_at_a_time(
    which: str, images: dict[str, np.ndarray], request: pytest.FixtureRequest
) -> None:
    detector = request.getfixturevalue(which)
    batch = list(images.values())
    together = detector.detect(batch)  # two batches of 4 (batch_size)
    assert len(together) == len(batch)
    for image, found in zip(batch, together, strict=True):
        assert_same(found, detector.detect([image])[0], TOLERANCE[which])


def test_submit_then_finish_equals_detect(
    faces: BlazeFaceDetector, hands: HandDetector, images: dict[str, np.ndarray]
) -> None:
    batch = list(images.values())
    finish_faces, finish_hands = faces.submit(batch), hands.submit(batch)  # both queued before either finishes
    for got, expected in zip(finish_faces(), faces.detect(batch), strict=True):
        assert_same(got, expected)
    for got, expected in zip(finish_hands(), hands.detect(batch), strict=True):
        assert_same(got, expected, TOLERANCE["hands"])


def test_tensor_input_equals_numpy(
    faces: BlazeFaceDetector, hands: HandDetector, images: dict[str, np.ndarray]
) -> None:
    arrays = [images[LONE_HAND], images["df_couple.jpg"]]
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]
    for detector, tolerance in ((faces, TOLERANCE["faces"]), (hands, TOLERANCE["hands"])):
        for a, b in zip(detector.detect(tensors), detector.detect(arrays), strict=True):
            assert_same(a, b, tolerance)


def test_lone_hand_is_flagged(hands: HandDetector, images: dict[str, np.ndarray]) -> None:
    found = hands.detect([images[LONE_HAND]])[0]
    assert found.max_score >= 0.5  # MediaPipe's hand-presence threshold
    assert found.scores[0] == pytest.approx(found.max_score)
    x1, y1, x2, y2 = found.boxes[0]
    height, width = images[LONE_HAND].shape[:2]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert list(found.scores) == sorted(found.scores, reverse=True)


def test_animals_are_not_hands_or_faces(
    faces: BlazeFaceDetector, hands: HandDetector, images: dict[str, np.ndarray]
) -> None:
    batch = [images[name] for name in NO_HUMAN]
    assert all(d.max_score < 0.5 for d in hands.detect(batch))
    assert all(d.max_score < 0.5 for d in faces.detect(batch))


def test_clear_faces_score_high(faces: BlazeFaceDetector, images: dict[str, np.ndarray]) -> None:
    for name, found in zip(CLEAR_FACES, faces.detect([images[n] for n in CLEAR_FACES]), strict=True):
        assert found.max_score >= 0.8, name  # MediaPipe keeps faces >= 0.6
        height, width = images[name].shape[:2]
        x1, y1, x2, y2 = found.boxes[0]
        # a face, not the whole picture: a box well inside the image
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (x2 - x1) * (y2 - y1) < 0.5 * width * height
        assert found.landmarks is None
    couple = faces.detect([images["df_couple.jpg"]])[0]
    assert couple.count_above(0.6) == 2


def test_hand_crops_landmark_outputs_equal_the_runtime_s(hands: HandDetector, images: dict[str, np.ndarray]) -> None:
    """The landmark network on the rotated hand crops the pipeline makes (not only on letterboxed photos)."""
    batch = list(images.values())
    letterboxed, rects = letterbox_batch(batch, 192, hands.device)
    image, _, boxes, points = hands.palms(*hands.palm_outputs(letterboxed / 255.0), rects)
    crops = hands.hand_crops(batch, image, palm_rects(boxes, points))
    assert len(crops) >= 3
    reference = runtime_outputs(LANDMARK_FILE, crops.permute(0, 2, 3, 1).contiguous().numpy())
    with torch.inference_mode():
        mine = [y.numpy() for y in hands.landmark_net(crops)]
    for ours, theirs in zip(mine, reference, strict=True):
        assert float(np.abs(ours - theirs).max()) <= RELATIVE * max(1.0, float(np.abs(theirs).max()))


def test_empty_and_odd_inputs(faces: BlazeFaceDetector, hands: HandDetector) -> None:
    assert faces.detect([]) == [] and hands.detect([]) == []
    grey = np.full((50, 300), 128, np.uint8)  # grey, very wide: letterboxed with a wide border
    rgba = np.zeros((40, 40, 4), np.uint8)
    for detector in (faces, hands):
        out = detector.detect([grey, rgba])
        assert len(out) == 2 and all(d.boxes.shape[1] == 4 for d in out)


def test_identity_covers_both_hand_models(hands: HandDetector) -> None:
    identity = hands.identity()
    assert identity["weights"].count("+") == 1  # palm digest + landmark digest
    assert "landmark_weights" not in identity["params"] and "device" not in identity["params"]
    assert identity["params"]["palm_floor"] == 0.1
    assert identity["constants"]["roi_scale"] == 2.6

"""The TFLite reader and the PyTorch graph runner: sparse weights densified as TFLite does, and the MediaPipe
networks' raw outputs on real photos equal to the TFLite runtime's (`ai-edge-litert`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, SHARED
from PIL import Image

from curate.detect.blazeface import FULL_RANGE
from curate.detect.hands import PALM
from curate.detect.mediapipe_crops import letterbox_batch
from curate.detect.mediapipe_ssd import anchor_centres, weighted_nms
from curate.detect.tflite_network import TfliteNetwork, fold_pads, load_network, same_padding
from curate.detect.tflite_weights import Dimension, Sparsity, densify, fold_constants, read_graph, read_raw_graph

# torch on two threads for this module (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_threads")

DEV = SHARED / "evalsets" / "dev" / "images"
PALM_FILE = MODELS / "mediapipe_palm_detection_full.tflite"
LANDMARK_FILE = MODELS / "mediapipe_hand_landmark_full.tflite"
FACE_FILE = MODELS / "mediapipe_face_detection_full_range_sparse.tflite"
# faces close and far, groups, a lone hand (the image the COCO detectors miss), another hand, animals, a painting
PHOTOS = [
    "df_dataset_img1.jpg",
    "fr_obama_and_biden.jpg",
    "df_couple.jpg",
    "mmp_freihand_00032915.jpg",
    "mmp_freihand_00000355.jpg",
    "caffe_cat.jpg",
    "dn_horses.jpg",
    "dn_scream.jpg",
]
# Largest |torch - TFLite| allowed on raw outputs, relative to the largest |output| of the batch (logits and
# coordinates reach a few hundred here). Measured: at most about 2e-6 of that; float32 sums in another order.
RELATIVE = 2e-5


def models_present(*files: Path) -> None:
    missing = [f.name for f in files if not f.exists()]
    if missing:
        pytest.skip(f"model files not found: {', '.join(missing)}")


def photos() -> list[np.ndarray]:
    if not DEV.exists():
        pytest.skip(f"{DEV} not found")
    out = []
    for name in PHOTOS:
        with Image.open(DEV / name) as image:
            out.append(np.asarray(image.convert("RGB")))
    return out


# --------------------------------------------------------------------------------------------------- reading


def test_densify_csr_matrix() -> None:
    # [[0, 7, 0], [8, 0, 9]]: rows dense, columns CSR
    sparsity = Sparsity(
        order=(0, 1),
        block_map=(),
        dims=(
            Dimension(dense=True, size=2),
            Dimension(dense=False, segments=np.array([0, 1, 3]), indices=np.array([1, 0, 2])),
        ),
    )
    dense = densify(np.array([7, 8, 9], np.float32), (2, 3), sparsity)
    np.testing.assert_array_equal(dense, [[0, 7, 0], [8, 0, 9]])


def test_densify_block_sparse() -> None:
    # 4 x 4 in 2 x 2 blocks, two of four blocks stored (block rows dense, block columns CSR, blocks dense)
    expected = np.array([[1, 6, 0, 0], [0, 0, 0, 0], [0, 0, 2, 3], [0, 0, 4, 5]], np.float32)
    sparsity = Sparsity(
        order=(0, 1, 2, 3),
        block_map=(0, 1),
        dims=(
            Dimension(dense=True, size=2),
            Dimension(dense=False, segments=np.array([0, 1, 2]), indices=np.array([0, 1])),
            Dimension(dense=True, size=2),
            Dimension(dense=True, size=2),
        ),
    )
    values = np.array([1, 6, 0, 0, 2, 3, 4, 5], np.float32)
    np.testing.assert_array_equal(densify(values, (4, 4), sparsity), expected)


def test_densify_traversal_order() -> None:
    # column-major storage: the order lists dimension 1 first; [[1, 2], [3, 4]] is stored 1, 3, 2, 4
    sparsity = Sparsity(order=(1, 0), block_map=(), dims=(Dimension(dense=True, size=2), Dimension(dense=True, size=2)))
    np.testing.assert_array_equal(densify(np.array([1, 3, 2, 4], np.float32), (2, 2), sparsity), [[1, 2], [3, 4]])


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert same_padding(192, 5, 2) == (1, 2)
    assert same_padding(192, 3, 2) == (0, 1)
    assert same_padding(96, 3, 1) == (1, 1)
    assert same_padding(12, 2, 2) == (0, 0)


def test_anchor_counts() -> None:
    assert anchor_centres(PALM).shape == (2016, 2)  # 24² x 2 + 12² x 6
    assert anchor_centres(FULL_RANGE).shape == (2304, 2)  # 48² x 1
    centres = anchor_centres(PALM)
    # stride 8 first, two anchors per cell, row-major: the first cell's centre twice, then the next column's
    np.testing.assert_allclose(centres[:3].numpy(), [[0.5 / 24, 0.5 / 24]] * 2 + [[1.5 / 24, 0.5 / 24]])


def test_a_truncated_tflite_file_is_refused_naming_it(tmp_path: Path) -> None:
    models_present(PALM_FILE)
    whole = PALM_FILE.read_bytes()
    for length in (64, 1024, len(whole) // 2):
        cut = tmp_path / f"cut{length}.tflite"
        cut.write_bytes(whole[:length])
        with pytest.raises(ValueError, match=rf"cut{length}\.tflite: (a truncated or damaged|not a) TFLite"):
            read_raw_graph(cut)


def test_graph_is_read_as_dense_float32() -> None:
    models_present(FACE_FILE, PALM_FILE)
    for path in (FACE_FILE, PALM_FILE):
        graph = read_graph(path)
        ops = {op.opcode for op in graph.operators}
        assert not ops & {"DENSIFY", "DEQUANTIZE"}
        for op in graph.operators:
            for i in op.inputs[1:]:
                data = graph.tensors[i].data if i >= 0 else None
                if data is not None and data.dtype.kind == "f":
                    assert data.dtype == np.float32 and data.shape == graph.tensors[i].shape
    raw = read_raw_graph(FACE_FILE)
    assert sum(op.opcode == "DENSIFY" for op in raw.operators) == 46
    # the 43 zero pads before BlazeFace's convolutions are folded into them
    assert sum(op.opcode == "PAD" for op in fold_pads(read_graph(FACE_FILE))) == 0


def test_densified_weights_equal_the_runtime_s() -> None:
    """Every DENSIFY output equals, to the bit, the tensor the TFLite runtime densifies (its reference kernels,
    without the XNNPACK delegate, which would take the op over and keep no output)."""
    models_present(FACE_FILE)
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    raw = read_raw_graph(FACE_FILE)
    folded = fold_constants(raw)
    interpreter = litert.Interpreter(
        model_path=str(FACE_FILE),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], np.zeros(details["shape"], np.float32))
    interpreter.invoke()
    checked = 0
    for op in raw.operators:
        if op.opcode == "DENSIFY":
            reference = interpreter.get_tensor(op.outputs[0])
            mine = folded.tensors[op.outputs[0]].data
            assert mine is not None and (reference != 0).any()
            np.testing.assert_array_equal(mine.astype(np.float32), reference.astype(np.float32))
            checked += 1
    assert checked == 46


# --------------------------------------------------------------------------------------------------- outputs


def runtime_outputs(path: Path, inputs: np.ndarray) -> list[np.ndarray]:
    """The TFLite runtime's outputs for NHWC inputs, one image at a time (the models take a batch of 1)."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    per_image = []
    for x in inputs:
        interpreter.set_tensor(details["index"], x[None])
        interpreter.invoke()
        per_image.append([interpreter.get_tensor(o["index"])[0] for o in outputs])
    return [np.stack([image[k] for image in per_image]) for k in range(len(outputs))]


@pytest.mark.parametrize(
    ("path", "low", "high", "relative"),
    [
        (PALM_FILE, 0.0, 1.0, RELATIVE),
        (LANDMARK_FILE, 0.0, 1.0, RELATIVE),
        (FACE_FILE, -1.0, 1.0, RELATIVE),
        # the other MediaPipe models beside them, through the same runner (not used by a detector yet)
        (MODELS / "mediapipe_palm_detection_lite.tflite", 0.0, 1.0, RELATIVE),
        (MODELS / "mediapipe_hand_landmark_lite.tflite", 0.0, 1.0, RELATIVE),
        (MODELS / "mediapipe_face_detection_short_range.tflite", -1.0, 1.0, RELATIVE),
        (MODELS / "mediapipe_pose_detection.tflite", -1.0, 1.0, RELATIVE),
        # its segmentation logits (up to ~1600) come out of a long chain of upsamplings: 4e-4 of that measured
        (MODELS / "mediapipe_pose_landmark_full.tflite", 0.0, 1.0, 1e-3),
    ],
    ids=lambda v: v.stem.removeprefix("mediapipe_") if isinstance(v, Path) else str(v),
)
def test_raw_outputs_equal_the_runtime_s(path: Path, low: float, high: float, relative: float) -> None:
    """The photos letterboxed as the detectors do, through both; the whole batch in one torch pass."""
    models_present(path)
    net: TfliteNetwork = load_network(path)
    size = net.input_shape[1]
    batch, _ = letterbox_batch(photos(), size, torch.device("cpu"))
    batch = batch * ((high - low) / 255.0) + low
    reference = runtime_outputs(path, batch.permute(0, 2, 3, 1).contiguous().numpy())
    with torch.inference_mode():
        mine = [y.numpy() for y in net(batch)]
    assert len(mine) == len(reference)
    for k, (ours, theirs) in enumerate(zip(mine, reference, strict=True)):
        assert ours.shape == theirs.shape
        scale = max(1.0, float(np.abs(theirs).max()))
        worst = float(np.abs(ours - theirs).max())
        assert worst <= relative * scale, f"output {k}: max |diff| {worst:.3g} at outputs up to {scale:.3g}"


def test_weighted_nms_blends_what_each_survivor_suppresses() -> None:
    # image 0: two overlapping boxes (IoU 0.6) and one apart; image 1: a box where image 0's pair is
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 1.0, 1.0], [0.0, 0.25, 1.0, 1.25], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 0.1, 0.1]],
            [[0.0, 0.0, 1.0, 1.0], [9.0, 9.0, 9.5, 9.5], [9.0, 9.0, 9.5, 9.5], [9.0, 9.0, 9.5, 9.5]],
        ]
    )
    keypoints = boxes[..., :2].reshape(2, 4, 1, 2).clone()
    scores = torch.tensor([[0.9, 0.3, 0.5, 0.05], [0.2, 0.0, 0.0, 0.0]])
    image, score, box, points = weighted_nms(boxes, keypoints, scores, floor=0.1, iou=0.3)
    assert image.tolist() == [0, 0, 1]
    np.testing.assert_allclose(score.numpy(), [0.9, 0.5, 0.2])
    # the 0.9 box takes the 0.3 one in: y moves by 0.25 x 0.3 / 1.2; the others stay
    np.testing.assert_allclose(box.numpy(), np.array([[0, 0.0625, 1, 1.0625], [5, 5, 6, 6], [0, 0, 1, 1]]), atol=1e-6)
    np.testing.assert_allclose(points[:, 0].numpy(), box[:, :2].numpy(), atol=1e-6)
    image, _, _, _ = weighted_nms(boxes, keypoints, scores, floor=0.1, iou=0.3, keep=1)
    assert image.tolist() == [0, 1]
    empty = weighted_nms(boxes, keypoints, scores, floor=0.95, iou=0.3)
    assert all(len(t) == 0 for t in empty)

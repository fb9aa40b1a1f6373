"""The GPU input path, exercised on the CPU: batched torchvision JPEG decoding with the EXIF orientation applied
by hand (nvJPEG ignores it), and every detector taking (3, H, W) uint8 tensors exactly as it takes NumPy arrays.
On a CUDA machine the same functions run with device="cuda" (bench/detect.py --device cuda)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import MODELS, encode, photo
from PIL import Image, ImageOps

from curate.detect.clip_filter import ClipHumanFilter
from curate.detect.decoding import decode, decode_batch, header, orient
from curate.detect.images import image_hw, to_chw, to_hwc_numpy
from curate.detect.retinaface import RetinaFaceDetector
from curate.detect.yolox import YoloxDetector
from curate.run import SAMPLE_DIR

SAMPLE_JPEGS = sorted((SAMPLE_DIR / "images").glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [decode(p.read_bytes()) for p in SAMPLE_JPEGS]


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(orientation: int) -> None:
    array = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(array)
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = orient(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_header_reads_format_mode_and_orientation() -> None:
    assert header(with_orientation(photo(), 6)) == ("JPEG", "RGB", 6)
    assert header(encode(photo(), "PNG"))[:2] == ("PNG", "RGB")
    assert header(encode(photo(mode="CMYK")))[1] == "CMYK"


def test_decode_batch_agrees_with_pil_for_every_kind_of_input() -> None:
    base = photo(64, 48, seed=3)
    blobs = [
        encode(base, quality=95),
        with_orientation(base, 6),  # turned: 48 x 64 once upright
        with_orientation(base, 3),
        encode(base, "PNG"),  # not a JPEG: PIL decodes it
        encode(base.convert("L")),  # grey JPEG: expanded to RGB
        encode(base.convert("CMYK")),  # CMYK: PIL, which knows the inversion Adobe writes
        b"not an image at all",
    ]
    images, errors = decode_batch(blobs, "cpu")
    assert errors[:6] == [None] * 6
    assert images[6] is None and errors[6] is not None and errors[6].startswith("UnidentifiedImageError")
    for blob, image in zip(blobs[:6], images[:6], strict=True):
        expected = decode(blob)
        assert image is not None and image.dtype == torch.uint8 and image.shape[0] == 3
        got = to_hwc_numpy(image)
        assert got.shape == expected.shape
        # libjpeg builds differ by IDCT rounding only
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 1.5


def test_one_corrupt_jpeg_does_not_fail_its_batch() -> None:
    good = encode(photo(seed=1))
    broken = good[:200] + b"\x00" * 50  # a JPEG header, then garbage
    images, errors = decode_batch([good, broken, good], "cpu")
    assert images[0] is not None and images[2] is not None
    assert errors[0] is None and errors[2] is None
    if images[1] is None:  # PIL may also salvage a truncated stream; either way nothing is lost silently
        assert errors[1]


def test_image_helpers_accept_both_forms(photos: list[np.ndarray]) -> None:
    array = photos[0]
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    assert image_hw(array) == image_hw(tensor) == array.shape[:2]
    assert torch.equal(to_chw(array, "cpu"), tensor)
    assert np.array_equal(to_hwc_numpy(tensor), array)
    grey = torch.from_numpy(array[:, :, 0])[None]
    assert to_chw(grey, "cpu").shape == (3, *array.shape[:2])
    with pytest.raises(ValueError, match="uint8"):
        to_chw(tensor.float(), "cpu")


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x.scores, y.scores, atol=1e-5)
        assert np.allclose(x.boxes, y.boxes, atol=1e-3)


@pytest.mark.skipif(not (MODELS / "retinaface_mobilenet0.25_Final.pth").exists(), reason="no RetinaFace weights")
def test_retinaface_takes_tensors(photos: list[np.ndarray]) -> None:
    detector = RetinaFaceDetector(MODELS / "retinaface_mobilenet0.25_Final.pth", batch_size=4)
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in photos]
    from_arrays = detector.detect(photos)
    assert any(d.max_score > 0.5 for d in from_arrays)  # the sample has faces: the comparison is not vacuous
    _same(detector.detect(tensors), from_arrays)


@pytest.mark.skipif(not (MODELS / "yolox_nano_coco_416.onnx").exists(), reason="no YOLOX-Nano weights")
def test_yolox_takes_tensors(photos: list[np.ndarray]) -> None:
    detector = YoloxDetector(MODELS / "yolox_nano_coco_416.onnx", batch_size=4, tiles=2, tile_min_side=200)
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in photos]
    from_arrays = detector.detect(photos)
    assert any(d.max_score > 0.5 for d in from_arrays)
    _same(detector.detect(tensors), from_arrays)


def test_clip_device_preprocessing_matches_open_clip_transform(photos: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    clip = ClipHumanFilter(  # randomly initialised: no CLIP weights exist offline
        "ViT-B-32",
        pretrained=None,
        human_classes=("a person",),
        other_classes=("a tree",),
        templates=("a photo of {}.",),
    )
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in photos]
    on_device = torch.stack([clip._prepare_on_device(t) for t in tensors])
    with_pil = torch.stack([clip._prepare(p) for p in photos])
    assert on_device.shape == with_pil.shape == (len(photos), 3, 224, 224)
    # PIL resizes in uint8, torch in float: they differ by rounding, in normalised units about 1/255 / std
    assert (on_device - with_pil).abs().mean() < 0.03
    a, b = clip.embed(tensors), clip.embed(photos)
    assert (a * b).sum(axis=1).min() > 0.99


@pytest.mark.skipif(not (MODELS / "retinaface_mobilenet0.25_Final.pth").exists(), reason="no RetinaFace weights")
def test_retinaface_square_canvases_give_the_results_of_tight_padding(photos: list[np.ndarray]) -> None:
    """The CUDA layout (square canvases, power-of-two batch counts), run here on the CPU: the padding masks keep
    every image's detections those it gets alone."""
    weights = MODELS / "retinaface_mobilenet0.25_Final.pth"
    tight = RetinaFaceDetector(weights, batch_size=4, canvas_step=0).detect(photos)
    canvas = RetinaFaceDetector(weights, batch_size=4, canvas_step=128).detect(photos[:5])  # 4 + 1 (padded to 1)
    three = RetinaFaceDetector(weights, batch_size=4, canvas_step=128).detect(photos[:3])  # padded to 4
    _same(canvas, tight[:5])
    _same(three, tight[:3])

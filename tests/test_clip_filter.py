"""Tests for the CLIP zero-shot human filter (`curate.detect.clip_filter`).

No CLIP weights exist offline and none can be downloaded, so every model here is a *randomly initialised*
open_clip model (`pretrained=None`, seeded). These tests check shapes, ranges, the probability maths, prompt
ensembling, determinism, batching and model loading paths; they say nothing about accuracy.

To keep the file fast on two CPU cores the model-based tests use a few classes and two templates: the full
default prompt set costs about a minute of text encoding for ViT-B-32 on two cores.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curate.detect.clip_filter import (
    HUMAN_CLASSES,
    NON_HUMAN_CLASSES,
    TEMPLATES,
    ClipHumanFilter,
    ClipScores,
    class_embeddings,
    class_probabilities,
    human_probability,
)

# torch on two threads for this module (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_threads")

IMAGES = Path(__file__).resolve().parents[1] / "curate" / "sample_data" / "images"
PHOTOS = [
    "caffe_cat.jpg",  # 360 x 480
    "df_selfie-many-people.jpg",  # 604 x 600
    "dlib_000288_00470387.jpg",  # 150 x 150
    "esr_children-alpha.png",  # PNG
    "fr_obama_partial_face.jpg",  # 1024 x 442, very tall
    "ns_golden_gate.jpg",  # 734 x 979
    "u2n_lamp2_meitu_1.jpg",
]
FEW_HUMAN = ("a person", "a person's hand")
FEW_OTHER = ("a landscape with no people", "a statue")
FEW_TEMPLATES = ("a photo of {}.", "a blurry photo of {}.")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [np.asarray(Image.open(IMAGES / name).convert("RGB")) for name in PHOTOS]


@pytest.fixture(scope="module")
def clip() -> ClipHumanFilter:
    torch.manual_seed(0)
    return ClipHumanFilter(
        "ViT-B-32",
        pretrained=None,  # random init: no weights offline
        batch_size=3,  # several batches and a partial last one over PHOTOS
        human_classes=FEW_HUMAN,
        other_classes=FEW_OTHER,
        templates=FEW_TEMPLATES,
    )


@pytest.fixture(scope="module")
def clip_scores(clip: ClipHumanFilter, photos: list[np.ndarray]) -> ClipScores:
    return clip.score(photos)


# -- the maths, no model ------------------------------------------------------------------------------------


def _basis(dim: int, *indices: int) -> np.ndarray:
    out = np.zeros((len(indices), dim), np.float32)
    out[np.arange(len(indices)), indices] = 1.0
    return out


def test_image_equal_to_a_human_class_is_human() -> None:
    human, other = _basis(8, 0, 1), _basis(8, 2, 3, 4)
    scale = 100.0
    probs = class_probabilities(_basis(8, 0), human, other, scale)
    assert probs.shape == (1, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # cosine 1 with the first human class, 0 with the four others
    expected = np.array([np.exp(scale), 1, 1, 1, 1]) / (np.exp(scale) + 4)
    np.testing.assert_allclose(probs[0], expected, rtol=1e-5, atol=1e-30)

    p = human_probability(_basis(8, 0), human, other, scale)
    assert p.dtype == np.float32 and p.shape == (1,)
    assert p[0] > 0.5
    np.testing.assert_allclose(p, probs[:, :2].sum(axis=1), rtol=1e-6)


def test_human_probability_sums_over_human_classes() -> None:
    human, other = _basis(6, 0, 1), _basis(6, 2, 3, 4)
    images = np.stack(
        [_basis(6, 0)[0], _basis(6, 3)[0], _basis(6, 5)[0], (_basis(6, 1)[0] + _basis(6, 2)[0]) / np.sqrt(2)]
    )
    scale = 10.0
    p = human_probability(images, human, other, scale)
    e = np.exp(scale)
    np.testing.assert_allclose(p[0], (e + 1) / (e + 4), rtol=1e-5)  # looks like a human class
    np.testing.assert_allclose(p[1], 2 / (e + 4), rtol=1e-5)  # looks like a non-human class
    assert p[1] < 0.5
    np.testing.assert_allclose(p[2], 2 / 5, rtol=1e-5)  # orthogonal to all: uniform, 2 of 5 classes
    c = np.exp(scale / np.sqrt(2))  # halfway between a human and a non-human class
    np.testing.assert_allclose(p[3], (c + 1) / (2 * c + 3), rtol=1e-5)
    # scale 0: every class equally likely whatever the image
    np.testing.assert_allclose(human_probability(images, human, other, 0.0), 2 / 5, rtol=1e-6)
    # huge scale does not overflow
    big = human_probability(images, human, other, 1e4)
    assert np.all(np.isfinite(big)) and np.all((big >= 0) & (big <= 1))


def test_class_embeddings_average_normalised_templates() -> None:
    templates = ("a photo of {}.", "a drawing of {}.", "a blurry photo of {}.")
    rng = np.random.default_rng(1)
    table = {
        t.format(c): rng.normal(size=5).astype(np.float32) * rng.uniform(0.1, 20)  # different norms on purpose
        for c in ("a dog", "a hand")
        for t in templates
    }
    calls: list[list[str]] = []

    def fake_encode(prompts: list[str]) -> np.ndarray:
        calls.append(prompts)
        return np.stack([table[p] for p in prompts])

    got = class_embeddings(["a dog", "a hand"], templates, fake_encode)
    assert len(calls) == 1  # one batch for all prompts, class-major
    assert calls[0] == [t.format(c) for c in ("a dog", "a hand") for t in templates]
    assert got.shape == (2, 5) and got.dtype == np.float32
    for row, name in zip(got, ("a dog", "a hand"), strict=True):
        unit = [table[t.format(name)] / np.linalg.norm(table[t.format(name)]) for t in templates]
        mean = np.mean(unit, axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)

    with pytest.raises(ValueError):
        class_embeddings(["a dog"], templates, lambda prompts: np.zeros((1, 5), np.float32))


def test_default_prompt_sets_are_well_formed() -> None:
    for template in TEMPLATES:
        assert template.count("{}") == 1
    assert len(set(TEMPLATES)) == len(TEMPLATES) >= 6
    assert len(set(HUMAN_CLASSES)) == len(HUMAN_CLASSES)
    assert len(set(NON_HUMAN_CLASSES)) == len(NON_HUMAN_CLASSES)
    assert not set(HUMAN_CLASSES) & set(NON_HUMAN_CLASSES)
    human, other = " | ".join(HUMAN_CLASSES), " | ".join(NON_HUMAN_CLASSES)
    for word in ("face", "hand", "feet", "legs", "arm", "crowd", "tattoo", "distance", "behind", "silhouette"):
        assert word in human, word
    for word in ("child", "athlete", "painting", "drawing"):
        assert word in human, word
    for word in ("landscape", "monkey", "ape", "building", "object", "food", "vehicle", "car", "empty street"):
        assert word in other, word
    for word in ("interior", "plant", "sky", "texture", "statue", "figurine", "robot", "mannequin"):
        assert word in other, word


# -- model names --------------------------------------------------------------------------------------------


def test_model_names_resolve() -> None:
    import open_clip

    params = inspect.signature(ClipHumanFilter).parameters
    assert params["model"].default == "ViT-B-32"
    assert params["pretrained"].default == "openai"
    names = open_clip.list_models()
    assert "ViT-B-32" in names and "ViT-L-14" in names  # default and strict preset
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512
    assert open_clip.get_model_config("ViT-L-14")["embed_dim"] == 768
    # OpenAI's weights were trained with QuickGELU; the filter reads that from the tag.
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai").get("quick_gelu")


# -- a random-init ViT-B-32 ---------------------------------------------------------------------------------


def test_score_shapes_and_ranges(clip: ClipHumanFilter, clip_scores: ClipScores, photos: list[np.ndarray]) -> None:
    scores = clip_scores
    n = len(photos)
    assert scores.human_prob.shape == (n,) and scores.human_prob.dtype == np.float32
    assert np.all((scores.human_prob >= 0) & (scores.human_prob <= 1))
    assert scores.embeddings.shape == (n, 512) and scores.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(scores.embeddings, axis=1), 1.0, atol=1e-5)
    assert len(scores.top_human_class) == n and set(scores.top_human_class) <= set(FEW_HUMAN)
    # the same numbers as the pure helper on the returned embeddings
    human_text, other_text = clip.text_embeddings()
    assert human_text.shape == (len(FEW_HUMAN), 512) and other_text.shape == (len(FEW_OTHER), 512)
    np.testing.assert_allclose(
        scores.human_prob, human_probability(scores.embeddings, human_text, other_text, clip.logit_scale), atol=1e-6
    )
    # random init starts at CLIP's initial temperature, 1 / 0.07
    assert clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_score_is_deterministic(clip: ClipHumanFilter, photos: list[np.ndarray]) -> None:
    first, second = clip.score(photos[:2]), clip.score(photos[:2])
    np.testing.assert_array_equal(first.human_prob, second.human_prob)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    assert first.top_human_class == second.top_human_class


def test_batched_equals_one_at_a_time(clip: ClipHumanFilter, clip_scores: ClipScores, photos: list[np.ndarray]) -> None:
    n = 4  # rows 0-2 came from the fixture's first batch of 3, row 3 from the second
    singles = [clip.score([image]) for image in photos[:n]]
    np.testing.assert_allclose(clip_scores.human_prob[:n], np.concatenate([s.human_prob for s in singles]), atol=1e-5)
    np.testing.assert_allclose(clip_scores.embeddings[:n], np.concatenate([s.embeddings for s in singles]), atol=1e-5)
    assert clip_scores.top_human_class[:n] == [s.top_human_class[0] for s in singles]


def test_text_embeddings_are_computed_once(
    clip: ClipHumanFilter, clip_scores: ClipScores, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = clip.text_embeddings()  # already computed by the clip_scores fixture
    calls: list[int] = []
    tokenizer = clip.tokenizer

    def counting(prompts: list[str]) -> torch.Tensor:
        calls.append(len(prompts))
        return tokenizer(prompts)

    monkeypatch.setattr(clip, "tokenizer", counting)
    clip.score([])
    second = clip.text_embeddings()
    assert calls == []
    assert first[0] is second[0] and first[1] is second[1]


def test_empty_and_odd_inputs(clip: ClipHumanFilter, clip_scores: ClipScores, photos: list[np.ndarray]) -> None:
    empty = clip.score([])
    assert empty.human_prob.shape == (0,) and empty.embeddings.shape == (0, 512) and empty.top_human_class == []
    rgb = photos[2]
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    gray = rgb[:, :, 0]
    odd = clip.score([rgba, gray, gray[:, :, None]])  # alpha dropped; grey, 2-D or (H, W, 1), made RGB
    assert odd.embeddings.shape == (3, 512)
    np.testing.assert_allclose(odd.embeddings[0], clip_scores.embeddings[2], atol=1e-5)
    np.testing.assert_allclose(odd.embeddings[1], odd.embeddings[2], atol=1e-5)
    with pytest.raises(ValueError):
        clip.score([np.zeros((4, 4, 2), np.uint8)])


def test_injected_model_matches_named_model(
    clip: ClipHumanFilter, clip_scores: ClipScores, photos: list[np.ndarray]
) -> None:
    """model_obj alone: the transform and tokenizer are rebuilt from open_clip and must match the named path."""
    injected = ClipHumanFilter(
        "ViT-B-32",
        model_obj=clip.model,
        batch_size=8,
        preprocess_workers=0,
        half=True,  # ignored on CPU
        human_classes=FEW_HUMAN,
        other_classes=FEW_OTHER,
        templates=FEW_TEMPLATES,
    )
    assert injected.half is False
    got = injected.score(photos[:3])
    np.testing.assert_allclose(got.embeddings, clip_scores.embeddings[:3], atol=1e-5)
    np.testing.assert_allclose(got.human_prob, clip_scores.human_prob[:3], atol=1e-5)
    assert got.top_human_class == clip_scores.top_human_class[:3]


def test_local_weights_file(
    clip: ClipHumanFilter, clip_scores: ClipScores, photos: list[np.ndarray], tmp_path: Path
) -> None:
    """The air-gapped path: a checkpoint file on disk is loaded instead of a download."""
    checkpoint = tmp_path / "vit-b-32-random.pt"
    torch.save(clip.model.state_dict(), checkpoint)
    torch.manual_seed(123)  # a different init, overwritten by the file
    loaded = ClipHumanFilter("ViT-B-32", pretrained=None, weights=checkpoint)
    assert loaded.logit_scale == pytest.approx(clip.logit_scale)
    # image side only: the text side is the same code path as the named model's
    np.testing.assert_allclose(loaded.embed(photos[:2]), clip_scores.embeddings[:2], atol=1e-5)

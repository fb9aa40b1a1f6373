"""CLIP zero-shot human filter: how likely an image shows a person (or part of one), plus its CLIP embedding.

Each image embedding is compared against text embeddings of HUMAN and NON-HUMAN class names. Every class's
text embedding is an ensemble: the class name is put into each of `TEMPLATES`, the prompts are encoded and
L2-normalised, averaged, and the mean is normalised again. The probability of "human" is the softmax mass, at
the model's logit scale, that falls on the human classes. The normalised image embedding is returned too so that
near-duplicate removal can reuse it without a second forward pass.

What counts as human (this follows PASS, which removes depictions of people as well as photographs):

* HUMAN: people at any scale (close-up faces, crowds, tiny figures far away in a landscape, people seen from
  behind, silhouettes), body parts (hands, feet, legs, arms, tattooed skin) and 2-D depictions of people
  (paintings, drawings, cartoon and anime characters).
* NON-HUMAN, deliberately including the hard negatives of our evaluation set: statues, sculptures, figurines,
  action figures, dolls, mannequins and robots are *not* people. The labelled sample set marks figurines
  (`garage kits`) and macaques as no-human, so these get their own non-human classes; without them CLIP
  tends to push human-shaped objects and primates onto the nearest human class. Monkeys and apes are listed
  separately for the same reason.

Models are loaded through `open_clip`: ViT-B-32 is the default, ViT-L-14 the strict preset. On air-gapped
machines pass `weights=` a local checkpoint file; it is handed to open_clip as `pretrained=<path>`, while the
`pretrained` tag still says which weights they are (OpenAI's checkpoints need QuickGELU, for example).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from curate.config import DetectConfig
from curate.detect.batching import chunks
from curate.detect.builder import RANDOM_INIT, Builder, Identified
from curate.detect.images import Image as ImageInput
from curate.detect.images import is_tensor, to_chw, to_hwc_numpy
from curate.models.registry import file_digest

# open_clip's OPENAI_DATASET_MEAN / _STD, the normalisation of models that do not state their own
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

HUMAN_CLASSES: tuple[str, ...] = (
    "a person",
    "a man",
    "a woman",
    "a child",
    "a baby",
    "a group of people",
    "a crowd of people",
    "a human face",
    "a close-up of a person's face",
    "a person's hand",
    "a person's hands holding something",
    "a person's bare feet",
    "a person's legs",
    "a person's arm",
    "a tattoo on a person's skin",
    "people far away in a landscape",
    "a tiny person in the distance",
    "a person seen from behind",
    "the silhouette of a person",
    "an athlete playing sport",
    "a person riding a bicycle",
    "people walking in a street",
    "a selfie",
    "a painting of a person",
    "a drawing of a person",
    "a cartoon or anime character of a person",
)

NON_HUMAN_CLASSES: tuple[str, ...] = (
    "a landscape with no people",
    "mountains",
    "a beach with no people",
    "a forest",
    "the sky",
    "clouds",
    "the sea",
    "an animal",
    "a dog",
    "a cat",
    "a bird",
    "a horse",
    "a wild animal",
    "an insect",
    "a fish",
    "a monkey",
    "an ape",
    "a building",
    "a bridge",
    "an empty street",
    "an empty room",
    "an interior with no people",
    "furniture",
    "an object",
    "a tool",
    "a lamp",
    "food",
    "groceries",
    "a car",
    "a vehicle",
    "a boat",
    "an airplane",
    "a plant",
    "flowers",
    "a tree",
    "a texture",
    "a pattern",
    "a statue",
    "a stone sculpture",
    "a figurine",
    "a toy action figure",
    "a doll",
    "a mannequin",
    "a robot",
    "an abstract painting",
    "a drawing of a landscape",
    "text on a sign",
)

TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a blurry photo of {}.",
    "a cropped photo of {}.",
    "a low resolution photo of {}.",
    "a close-up photo of {}.",
    "a photo of {}, taken from far away.",
    "a dark photo of {}.",
    "a bright photo of {}.",
    "a black and white photo of {}.",
    "an image showing {}.",
)

# OpenAI trained with a learned temperature that saturates at 100; random-init models start at 1/0.07.
MAX_LOGIT_SCALE = 100.0


@dataclass
class ClipScores:
    human_prob: np.ndarray  # (N,) float32
    top_human_class: list[str]  # the best-matching human class per image (for the audit trail)
    embeddings: np.ndarray  # (N, D) float32, L2-normalised


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def class_embeddings(
    classnames: Sequence[str],
    templates: Sequence[str],
    encode_text: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """Prompt ensembling: (C, D) float32, each row the normalised mean of the class's normalised template embeddings.

    `encode_text` maps a list of prompts to a (len, D) array (normalised or not); it is called once for all
    prompts, class-major, so a real model sees one big batch.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    prompts = [template.format(name) for name in classnames for template in templates]
    encoded = np.asarray(encode_text(prompts), dtype=np.float32)
    if encoded.ndim != 2 or encoded.shape[0] != len(prompts):
        raise ValueError(f"encode_text returned shape {encoded.shape}, expected ({len(prompts)}, D)")
    per_class = _l2_normalise(encoded).reshape(len(classnames), len(templates), -1).mean(axis=1)
    return _l2_normalise(per_class).astype(np.float32)


def class_probabilities(
    image_emb: np.ndarray, human_text: np.ndarray, other_text: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Softmax over all classes, human classes first: (N, H + O) float32."""
    image_emb = np.atleast_2d(np.asarray(image_emb, dtype=np.float32))
    text = np.concatenate([human_text, other_text], axis=0).astype(np.float32)
    logits = np.float32(logit_scale) * (image_emb @ text.T)
    logits -= logits.max(axis=1, keepdims=True)
    expd = np.exp(logits)
    return (expd / expd.sum(axis=1, keepdims=True)).astype(np.float32)


def human_probability(
    image_emb: np.ndarray, human_text: np.ndarray, other_text: np.ndarray, logit_scale: float
) -> np.ndarray:
    """P(human) per image: softmax(logit_scale × cosine) over human + other classes, summed over the human ones.

    All embeddings are expected L2-normalised: image_emb (N, D), human_text (H, D), other_text (O, D). Returns
    (N,) float32 in [0, 1].
    """
    probs = class_probabilities(image_emb, human_text, other_text, logit_scale)
    return np.clip(probs[:, : len(human_text)].sum(axis=1), 0.0, 1.0).astype(np.float32)


def _as_rgb_pil(image: np.ndarray) -> Image.Image:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L").convert("RGB")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


class ClipHumanFilter(Identified):
    """Zero-shot human probability and image embeddings from an open_clip model.

    `model`/`pretrained` name the open_clip architecture and weights tag; `weights` is a local checkpoint file
    used instead of a download. Tests (no CLIP weights exist offline) inject a randomly initialised model via
    `model_obj`, `preprocess` (open_clip's val transform) and `tokenizer`. `half` uses float16 autocast, on CUDA
    only; on CPU everything runs in float32. `preprocess_workers` threads decode/resize a batch in parallel
    (PIL releases the GIL while resizing); 0 preprocesses in the calling thread. `human_classes`,
    `other_classes` and `templates` default to the module's prompt sets; tests pass smaller ones because the
    text side costs one text-encoder pass per class × template (73 × 10 prompts: about a minute for ViT-B-32 on
    two CPU cores, well under a second on a GPU), paid once per instance.
    """

    name = "clip"
    version = "1"
    speed_only = frozenset({"device", "batch_size", "preprocess_workers"})

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"openai_mean": OPENAI_MEAN, "openai_std": OPENAI_STD, "max_logit_scale": MAX_LOGIT_SCALE}

    @classmethod
    def weights_of(cls, bound: Mapping[str, Any]) -> str:
        """The checkpoint file's sha256; else what else the weights are (an injected model, open_clip's own
        download of the pretrained tag, or none)."""
        if bound.get("weights") is not None:
            return file_digest(Path(bound["weights"]))
        if bound.get("model_obj") is not None:
            return "injected: a model object, no checkpoint file"
        if bound.get("pretrained"):
            return f"open_clip: {bound['model']}/{bound['pretrained']}, as open_clip downloads it"
        return RANDOM_INIT

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        weights: Path | None = None,
        half: bool = False,
        model_obj: Any = None,
        preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        preprocess_workers: int = 4,
        human_classes: Sequence[str] = HUMAN_CLASSES,
        other_classes: Sequence[str] = NON_HUMAN_CLASSES,
        templates: Sequence[str] = TEMPLATES,
    ) -> None:
        self._identify(locals())
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not human_classes or not other_classes or not templates:
            raise ValueError("need human classes, non-human classes and templates")
        self.human_classes = tuple(human_classes)
        self.other_classes = tuple(other_classes)
        self.templates = tuple(templates)
        self.model_name = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.half = bool(half) and self.device.type == "cuda"
        self.preprocess_workers = max(0, int(preprocess_workers))

        if model_obj is None or preprocess is None or tokenizer is None:
            import open_clip

            if model_obj is None:
                source = str(weights) if weights is not None else pretrained
                quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu"))
                model_obj, _, val_transform = open_clip.create_model_and_transforms(
                    model, pretrained=source, device=self.device, force_quick_gelu=quick_gelu
                )
                if preprocess is None:
                    preprocess = val_transform
            if preprocess is None:
                # A model was injected without its transform: rebuild open_clip's val transform from its config.
                preprocess = open_clip.image_transform(
                    model_obj.visual.image_size,
                    is_train=False,
                    mean=getattr(model_obj.visual, "image_mean", None),
                    std=getattr(model_obj.visual, "image_std", None),
                )
            if tokenizer is None:
                tokenizer = open_clip.get_tokenizer(model)

        self.model = model_obj.to(self.device).eval()
        visual = self.model.visual
        size = visual.image_size
        self.input_size = int(size if isinstance(size, int) else size[0])
        self._pixel_mean = torch.tensor(getattr(visual, "image_mean", None) or OPENAI_MEAN, device=self.device)
        self._pixel_std = torch.tensor(getattr(visual, "image_std", None) or OPENAI_STD, device=self.device)
        self._pixel_mean, self._pixel_std = self._pixel_mean[:, None, None], self._pixel_std[:, None, None]
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        scale = getattr(self.model, "logit_scale", None)
        self.logit_scale = (
            min(float(scale.exp().item()), MAX_LOGIT_SCALE) if isinstance(scale, torch.Tensor) else MAX_LOGIT_SCALE
        )
        self._human_text: np.ndarray | None = None
        self._other_text: np.ndarray | None = None

    # -- text side, once per instance -------------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self.half:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _encode_text(self, prompts: list[str]) -> np.ndarray:
        encoded = []
        with torch.inference_mode(), self._autocast():
            for batch in chunks(prompts, 256):
                tokens = self.tokenizer(list(batch)).to(self.device)
                encoded.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(encoded, axis=0)

    def text_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(human (H, D), non-human (O, D)) ensembled class embeddings, computed on first use and cached."""
        if self._human_text is None or self._other_text is None:
            both = class_embeddings((*self.human_classes, *self.other_classes), self.templates, self._encode_text)
            n_human = len(self.human_classes)
            self._human_text, self._other_text = both[:n_human], both[n_human:]
        return self._human_text, self._other_text

    # -- image side -----------------------------------------------------------------------------------------

    def _prepare(self, image: ImageInput) -> torch.Tensor:
        return self.preprocess(_as_rgb_pil(to_hwc_numpy(image)))

    def _resize_on_device(self, image: ImageInput) -> torch.Tensor:
        """open_clip's val transform up to the crop (short side to the input size, bicubic with antialias, centre
        crop), done with torch on the device, on the 0..255 scale; ``_normalise`` finishes it."""
        pixels = to_chw(image, self.device).float()[None]
        height, width = pixels.shape[-2:]
        size = self.input_size
        if height <= width:
            new_h, new_w = size, max(size, int(size * width / height))
        else:
            new_h, new_w = max(size, int(size * height / width)), size
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
        return pixels[0, :, top : top + size, left : left + size]

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resized 0..255 pixels (..., 3, S, S) -> clamped to 0..1 and normalised with the model's mean and std."""
        return (pixels.clamp(0.0, 255.0) / 255.0 - self._pixel_mean) / self._pixel_std

    def _prepare_on_device(self, image: ImageInput) -> torch.Tensor:
        """open_clip's val transform done with torch on the device, for images already decoded there. It differs
        from the PIL path only by rounding."""
        return self._normalise(self._resize_on_device(image))

    def _pixels(self, images: Sequence[ImageInput], pool: ThreadPoolExecutor | None) -> torch.Tensor:
        if all(is_tensor(image) for image in images):
            # one stack and one normalisation for the batch, not one per image: fewer kernel launches
            return self._normalise(torch.stack([self._resize_on_device(image) for image in images]))
        tensors = list(pool.map(self._prepare, images)) if pool is not None else [self._prepare(i) for i in images]
        batch = torch.stack(tensors)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def submit_embed(self, images: Sequence[ImageInput]) -> Callable[[], np.ndarray]:
        """Queue the image encoder's work on ``images``; returns the function that waits for it and gives the
        (N, D) float32 L2-normalised embeddings. In between, a caller can queue other models' work."""
        if len(images) == 0:
            width = self.text_embeddings()[0].shape[1]
            return lambda: np.zeros((0, width), np.float32)
        queued = []
        workers = min(self.preprocess_workers, len(images))
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            with torch.inference_mode():
                for batch in chunks(images, self.batch_size):
                    pixels = self._pixels(batch, pool)
                    with self._autocast():
                        queued.append(self.model.encode_image(pixels).float())
        finally:
            if pool is not None:
                pool.shutdown()
        return lambda: _l2_normalise(torch.cat(queued).cpu().numpy()).astype(np.float32)

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings."""
        return self.submit_embed(images)()

    def submit(self, images: Sequence[ImageInput]) -> Callable[[], ClipScores]:
        """As ``score``, in two steps: queue the work now, finish it (waiting for the device) when called."""
        human_text, other_text = self.text_embeddings()
        embeddings_when_done = self.submit_embed(images)

        def finish() -> ClipScores:
            embeddings = embeddings_when_done()
            probs = class_probabilities(embeddings, human_text, other_text, self.logit_scale)
            n_human = len(human_text)
            human_prob = np.clip(probs[:, :n_human].sum(axis=1), 0.0, 1.0).astype(np.float32)
            top = [self.human_classes[i] for i in probs[:, :n_human].argmax(axis=1)] if len(embeddings) else []
            return ClipScores(human_prob=human_prob, top_human_class=top, embeddings=embeddings)

        return finish

    def score(self, images: Sequence[ImageInput]) -> ClipScores:
        """Human probability, best human class and embedding for each RGB uint8 (H, W, 3) image of any size."""
        return self.submit(images)()


def options(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments. The pretrained tag goes along with the checkpoint file: it says which
    weights the file holds (OpenAI's need QuickGELU)."""
    return {
        "model": detect.clip_model,
        "pretrained": detect.clip_pretrained,
        "batch_size": detect.batch_size,
        "half": detect.half,
    }


build = Builder(ClipHumanFilter, options)

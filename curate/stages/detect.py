"""detect: run the face, person and CLIP detectors on every fetched image and store raw scores and boxes.

No decision is taken here (see `curate.detect.decide`, applied at release), so re-tuning a threshold never
re-runs a model. Images are decoded one batch ahead of inference: by PIL in a CPU thread, or on a GPU by nvJPEG
(`curate.detect.decoding`), whose pixels then stay on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from curate.config import CurateConfig
from curate.detect.decoding import DECODE_ERRORS, decode, decode_batch
from curate.detect.images import Image
from curate.detect.types import COUNT_ABOVE, Detections, Detector
from curate.io.tars import read_members
from curate.models.registry import REGISTRY
from curate.rundir import RunDir
from curate.stages.base import ShardStage

MAX_BOXES = 100


class Scorer:
    """Runs every configured detector on a batch of decoded images (None = could not decode) and returns
    one list per score column, aligned with the batch. Used by the detect stage and by curate.evaluate."""

    def __init__(self, cfg: CurateConfig) -> None:
        import torch

        from curate.detect.loaders import clip_filter, face_detectors, person_detectors, pick_device

        self.cfg = cfg.detect
        self.device = device = pick_device(self.cfg.device)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        elif device == "cpu" and not cfg.dask.address and cfg.dask.n_workers != 1:
            # The LocalCluster already runs a worker per core: more torch threads would only fight over them.
            torch.set_num_threads(1)
        self.families = [
            ("face", self.cfg.face, face_detectors(self.cfg, cfg.models, device)),
            ("person", self.cfg.person, person_detectors(self.cfg, cfg.models, device)),
        ]
        self.clip = clip_filter(cfg, device)

    def score(self, images: Sequence[Image | None]) -> dict[str, list[Any]]:
        ok = [i for i, image in enumerate(images) if image is not None]
        batch = [image for image in images if image is not None]
        n = len(images)
        # Every model's work is queued before any result is awaited: while the device runs one model, the host
        # prepares the next one's inputs, instead of the two taking turns.
        pending = [
            (f"{family}_{name}", detector, queue(detector, batch))
            for family, names, detectors in self.families
            for name, detector in zip(names, detectors, strict=True)
        ]
        clip_pending = self.clip.submit(batch) if self.clip is not None and batch else None
        results: dict[str, list[Any]] = {}
        for prefix, detector, finish in pending:
            found = finish()
            results[f"{prefix}_max"] = spread(ok, n, [d.max_score for d in found])
            if getattr(detector, "tiles", 1) > 1:  # a score of its own for what only the tiles saw
                results[f"{prefix}_tiles_max"] = spread(ok, n, [d.tiles_best for d in found])
            results[f"{prefix}_count"] = spread(ok, n, [d.count_above(COUNT_ABOVE) for d in found])
            results[f"{prefix}_boxes"] = spread(ok, n, [flatten(d, self.cfg.box_floor) for d in found])
        if self.clip is not None:
            scored = clip_pending() if clip_pending is not None else None
            results["clip_human_prob"] = spread(ok, n, [float(p) for p in scored.human_prob] if scored else [])
            results["clip_top_class"] = spread(ok, n, list(scored.top_human_class) if scored else [])
            embeddings = [e.astype(np.float32).tolist() for e in scored.embeddings] if scored else []
            results["clip_embedding"] = spread(ok, n, embeddings)
        return results


def queue(detector: Detector, images: Sequence[Image]) -> Callable[[], list[Detections]]:
    """The detector's two-step form where it has one (``submit``: queue now, finish later), else a deferred
    ``detect``. No images: nothing to run."""
    if not images:
        return list
    submit = getattr(detector, "submit", None)
    if submit is not None:
        finish: Callable[[], list[Detections]] = submit(images)
        return finish
    return lambda: detector.detect(images)


def spread(ok: list[int], n: int, values: Sequence[Any]) -> list[Any]:
    """Values for the decodable images, None for the others."""
    column: list[Any] = [None] * n
    for position, value in zip(ok, values, strict=True):
        column[position] = value
    return column


def flatten(found: Detections, floor: float) -> list[float]:
    """[x1, y1, x2, y2, score, …] of the boxes at or above `floor`, best first, at most MAX_BOXES."""
    keep = np.argsort(-found.scores)[:MAX_BOXES]
    keep = keep[found.scores[keep] >= floor]
    rows = np.concatenate([found.boxes[keep], found.scores[keep, None]], axis=1)
    return [round(float(v), 3) for v in rows.reshape(-1)]


class DetectStage(ShardStage):
    name = "detect"
    version = "1"
    uses_gpu = True
    # Batching is tested to give the same results as one image at a time; the device only moves the work.
    runtime_keys = frozenset({"batch_size", "device", "torch_threads", "gpu_decode"})

    def fingerprint_config(self) -> dict[str, Any]:
        config = super().fingerprint_config()
        names = [*self.cfg.detect.face, *self.cfg.detect.person]
        config["weights"] = {n: REGISTRY[n].sha256 for n in names if n in REGISTRY}
        return config

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        scorer = Scorer(self.cfg)
        blobs = read_members(run.images(shard), set(rows["tar_member"].dropna()))
        columns: dict[str, list[Any]] = {}
        gpu = scorer.device if scorer.device.startswith("cuda") and self.cfg.detect.gpu_decode else None
        in_order = [blobs.get(member) for member in rows["tar_member"]]
        for images, errors in decoded_batches(in_order, self.cfg.detect.batch_size, gpu):
            results = scorer.score(images)
            results["detect_reason"] = ["decode_error" if e else "ok" for e in errors]
            results["detect_error"] = list(errors)
            for key, values in results.items():
                columns.setdefault(key, []).extend(values)
        if not columns:
            columns = {"detect_reason": [], "detect_error": []}
        frame = pd.DataFrame(columns, index=range(len(rows)))
        frame["detect_status"] = np.where(frame["detect_reason"] == "ok", "ok", "failed")
        return frame


def decoded_batches(
    blobs: list[bytes | None], size: int, gpu: str | None
) -> Iterator[tuple[list[Image | None], list[str | None]]]:
    """(images, errors) per batch of `size`, in order; the next batch decodes in a thread while the caller infers
    on this one. `gpu`: the CUDA device whose nvJPEG decodes JPEGs, or None for PIL on the CPU. A None blob (a
    member missing from the shard's tar) becomes an error, never a silent gap."""

    def load(chunk: list[bytes | None]) -> tuple[list[Image | None], list[str | None]]:
        present = [i for i, data in enumerate(chunk) if data is not None]
        images: list[Image | None] = [None] * len(chunk)
        errors: list[str | None] = ["KeyError: image missing from the shard's tar"] * len(chunk)
        if gpu is not None:
            decoded, failed = decode_batch([chunk[i] or b"" for i in present], gpu)
        else:
            decoded, failed = [], []
            for i in present:
                try:
                    decoded.append(decode(chunk[i] or b""))
                    failed.append(None)
                except DECODE_ERRORS as err:
                    decoded.append(None)
                    failed.append(f"{type(err).__name__}: {str(err)[:200]}")
        for i, image, error in zip(present, decoded, failed, strict=True):
            images[i], errors[i] = image, error
        return images, errors

    chunks = [blobs[i : i + size] for i in range(0, len(blobs), size)]
    with ThreadPoolExecutor(max_workers=1) as decoder:
        upcoming = decoder.submit(load, chunks[0]) if chunks else None
        for index in range(len(chunks)):
            assert upcoming is not None
            images, errors = upcoming.result()
            if index + 1 < len(chunks):
                upcoming = decoder.submit(load, chunks[index + 1])
            yield images, errors

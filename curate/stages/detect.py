"""detect: run the face, person, hand and CLIP detectors on every fetched image and store raw scores and boxes.

No decision is taken here (see `curate.detect.decide`, applied at release), so re-tuning a threshold never
re-runs a model. Images are decoded one batch ahead of inference: by PIL in a CPU thread, or on a GPU by nvJPEG
(`curate.detect.decoding`), whose pixels then stay on the GPU.

Memory. A shard's tar is indexed, not read (`curate.io.tars.TarMembers`): a member's bytes are read when its
batch is decoded, and batches are cut by pixels (`detect.batch_pixels`) as well as by count, so a worker holds
two batches of pixels (the one being scored, the one decoding) whatever the shard holds; a photo over the budget
is a batch of its own and is scored with nothing decoding beside it.

Fingerprint. What shapes the stored scores lives in code as much as in config: every detector reports its
`identity()` (class, version, effective arguments, output-shaping constants, the sha256 of the weights it loaded;
`curate.detect.builder`), and the fingerprint holds those (computed in the client without building a model) with
the detect config's non-speed keys and the constants of what is stored (MAX_BOXES, COUNT_ABOVE). A worker checks
that the detectors it built are the ones fingerprinted (e.g. that its weight files are the client's).

Faults. One image must not fail its shard: a batch whose scoring raises is scored again image by image, and an
image that still raises (or whose bytes could not be read or decoded for an unforeseen reason) becomes that
row's `failed` / `internal_error`, with `curate.faults.describe` in `detect_error`; the other rows keep their
scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from curate.config import DETECTOR_FAMILIES, CurateConfig
from curate.detect.decoding import DECODE_ERRORS, decode, decode_batch, header_size
from curate.detect.images import Image
from curate.detect.types import COUNT_ABOVE, MAX_BOXES, Detections, Detector, LooksAtTilesLater
from curate.faults import INTERNAL_ERROR, describe
from curate.io.atomic import read_json
from curate.io.tars import TarMembers
from curate.manifest import detect_columns, dtypes, frame_of, tiles_scored
from curate.models.registry import absent
from curate.rundir import RunDir
from curate.schema import FAILED, OK
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.detect.clip_filter import ClipHumanFilter

PIXELS_PER_SLOT = 1024 * 768  # detect.batch_pixels=0: this many pixels per image of batch_size


class Scorer:
    """Runs every configured detector on a batch of decoded images (None = could not decode) and returns
    one list per score column, aligned with the batch. Used by the detect stage and by curate.evaluate."""

    def __init__(self, cfg: CurateConfig) -> None:
        import torch

        from curate.detect.loaders import clip_filter, family_detectors, pick_device

        self.cfg = cfg.detect
        self.device = device = pick_device(self.cfg.device)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        elif device == "cpu" and not cfg.dask.address and cfg.dask.n_workers != 1:
            # The LocalCluster already runs a worker per core: more torch threads would only fight over them.
            torch.set_num_threads(1)
        self.families = [
            (family, getattr(self.cfg, family), family_detectors(family, self.cfg, cfg.models, device))
            for family in DETECTOR_FAMILIES
        ]
        # Which detectors store a tiles score is declared (curate.manifest, the columns of the manifest); the
        # detectors as built must agree, or a column would be empty or missing.
        self.tiled = {
            f"{family}_{name}": tiles_scored(family, name, self.cfg)
            for family, names, _ in self.families
            for name in names
        }
        for family, names, detectors in self.families:
            for name, detector in zip(names, detectors, strict=True):
                if (detector.tiles > 1) != self.tiled[f"{family}_{name}"]:
                    raise RuntimeError(f"{family} detector {name} disagrees with curate.manifest.tiles_scored")
        self.clip: ClipHumanFilter | None = clip_filter(cfg, device)

    def identities(self) -> dict[str, Any]:
        """Each detector's identity(), per family: what `curate.detect.loaders.identities` computes without them."""
        found: dict[str, Any] = {
            family: {name: detector.identity() for name, detector in zip(names, detectors, strict=True)}
            for family, names, detectors in self.families
        }
        found["clip"] = self.clip.identity() if self.clip is not None else None
        return found

    def score(self, images: Sequence[Image | None]) -> dict[str, list[Any]]:
        ok = [i for i, image in enumerate(images) if image is not None]
        batch = [image for image in images if image is not None]
        n = len(images)
        detectors = [(f"{family}_{name}", detector) for family, names, found in self.families
                     for name, detector in zip(names, found, strict=True)]  # fmt: skip
        later: dict[str, LooksAtTilesLater] = {
            prefix: detector for prefix, detector in detectors if isinstance(detector, LooksAtTilesLater)
            and detector.tile_policy == "auto" and detector.tiles > 1 and batch
        }  # fmt: skip
        # Every model's work is queued before any result is awaited: while the device runs one model, the host
        # prepares the next one's inputs, instead of the two taking turns. A detector that looks at its tiles
        # later (tile_policy=auto) queues its full views now.
        pending = [
            (prefix, later[prefix].submit_views(batch) if prefix in later else queue(detector, batch))
            for prefix, detector in detectors
        ]
        clip_pending = self.clip.submit(batch) if self.clip is not None and batch else None
        found: dict[str, Any] = {prefix: finish() for prefix, finish in pending}
        found_views = {prefix: found[prefix] for prefix in later}
        decided_by: list[str | None] = [None] * len(batch)
        if later:
            decided_by = self.decided_by(
                {p: v.best if p in later else [d.max_score for d in v] for p, v in found.items()}
            )
            decided = [column is not None for column in decided_by]
            tiles = {prefix: detector.submit_tiles(found[prefix], decided) for prefix, detector in later.items()}
            found.update({prefix: finish() for prefix, finish in tiles.items()})
        results: dict[str, list[Any]] = {}
        for prefix, _ in detectors:
            detections: list[Detections] = found[prefix]
            results[f"{prefix}_max"] = spread(ok, n, [d.max_score for d in detections])
            if self.tiled[prefix]:  # a score of its own for what only the tiles saw, and how it was looked at
                results[f"{prefix}_tiles_max"] = spread(ok, n, [d.tiles_best for d in detections])
                results[f"{prefix}_tiles_looked"] = spread(ok, n, [d.tiles_looked for d in detections])
                # only an image that has tiles had them skipped (see detect.person_tile_min_side)
                views = found_views.get(prefix)
                by = [b if views is not None and views.windows[i] else None for i, b in enumerate(decided_by)]
                results[f"{prefix}_tiles_decided_by"] = spread(ok, n, by)
            results[f"{prefix}_count"] = spread(ok, n, [d.count_above(COUNT_ABOVE) for d in detections])
            results[f"{prefix}_boxes"] = spread(ok, n, [flatten(d, self.cfg.box_floor) for d in detections])
        if self.clip is not None:
            scored = clip_pending() if clip_pending is not None else None
            results["clip_human_prob"] = spread(ok, n, [float(p) for p in scored.human_prob] if scored else [])
            results["clip_top_class"] = spread(ok, n, list(scored.top_human_class) if scored else [])
            embeddings = [e.astype(np.float32).tolist() for e in scored.embeddings] if scored else []
            results["clip_embedding"] = spread(ok, n, embeddings)
        return results

    def decided_by(self, best: dict[str, list[float]]) -> list[str | None]:
        """Per image, the first score column (face, then person full views, then hands) whose score reaches
        detect.tile_decisive: the full view decides that image, its tiles cannot change the decision under a
        preset that rejects there (decide sends it to review under one that does not). None: not decided."""
        count = len(next(iter(best.values()), []))
        decided: list[str | None] = [None] * count
        for prefix, scores in best.items():
            for i, score in enumerate(scores):
                if decided[i] is None and score >= self.cfg.tile_decisive:
                    decided[i] = f"{prefix}_max"
        return decided


def queue(detector: Detector, images: Sequence[Image]) -> Callable[[], list[Detections]]:
    """The detector's two-step form (``submit``: queue now, finish later). No images: nothing to run."""
    if not images:
        return list
    return detector.submit(images)


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
    # 2: the fingerprint holds the detectors' identities (their code, constants and weights on disk)
    version = "2"
    uses_gpu = True
    # Speed-only keys (batch_size, batch_pixels, device, torch_threads, gpu_decode) are marked RUNTIME in
    # curate.config: batching is tested to give the results of one image at a time, whatever cuts the batches
    # (count or pixels: tests/test_detect_memory.py); the device only moves the work.

    def fingerprint_config(self) -> dict[str, Any]:
        config = super().fingerprint_config()
        config["stored"] = {"max_boxes": MAX_BOXES, "count_above": COUNT_ABOVE}  # as flatten and score read them
        config["detectors"] = dict(self.identities)
        if not self.cfg.detect.hand:
            # No hand detector: fingerprinted as before detect.hand existed, so that a run from then resumes
            # without re-detecting (a configured one is in both, so adding or changing one re-runs detect).
            config.pop("hand", None)
            config["detectors"].pop("hand", None)
        if not self.cfg.detect.person_tiles_skip:
            config.pop("person_tiles_skip", None)  # likewise: runs from before it existed keep their fingerprint
        return config

    @cached_property
    def identities(self) -> dict[str, Any]:
        """The configured detectors' identities, computed once per stage object (the fingerprint asks per shard),
        in the client: the stage object travels to the workers with them, and `process` holds its detectors to
        them. A weight file that is not on this machine counts with the digest this run recorded for it."""
        from curate.detect.loaders import identities

        recorded = read_json(RunDir(Path(self.cfg.run.dir)).detect_weights) or {}
        found: dict[str, Any] = identities(self.cfg, recorded)
        return found

    def before_work(self) -> None:
        """Misconfigured detectors and a missing weight file fail here, before any shard is submitted; the digests
        of the files that will score are recorded for the data card (a model without a published digest is known
        only this way) and for the fingerprint of a later run on a machine without them."""
        from curate.detect.loaders import clip_key, weights_path
        from curate.io.atomic import write_json
        from curate.models.registry import CLIP, file_digest, needed, refuse_bad_detectors, weights_digest

        refuse_bad_detectors(self.cfg)
        # a model of several files (the hands' palm and landmark networks) records their digests joined, as its
        # identity states them
        digests = {name: weights_digest(name, self.cfg.models) for name in needed(self.cfg)}
        if self.cfg.detect.clip_model:
            digests[clip_key(self.cfg.detect)] = file_digest(weights_path(CLIP, self.cfg))
        write_json(RunDir(Path(self.cfg.run.dir)).detect_weights, digests)

    def scorer(self) -> Scorer:
        """The detectors for one shard (a seam: a test may wrap them, e.g. to script a fault)."""
        return Scorer(self.cfg)

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        scorer = self.scorer()
        drift = unlike(self.identities, scorer.identities())
        if drift:  # the shard's fingerprint would name other detectors than the ones that score it
            raise RuntimeError("the detectors built here are not the ones fingerprinted: " + "; ".join(drift))
        detect = self.cfg.detect
        gpu = scorer.device if scorer.device.startswith("cuda") and detect.gpu_decode else None
        members = [m if isinstance(m, str) else None for m in rows["tar_member"]]
        columns: dict[str, list[Any]] = {}
        reasons: list[str] = []
        errors: list[str | None] = []
        with TarMembers(run.images(shard)) as tar:
            if any(members):
                # Opened and indexed here, outside the rows' guards: a tar that is gone or cannot be read is the
                # shard's failure (Dask retries it; a lost mount may come back), not every row's error.
                if not tar.path.exists():
                    raise FileNotFoundError(f"{tar.path}: fetch wrote it, it is gone")
                tar.index  # noqa: B018 - the property opens and indexes the tar
            pixels = detect.batch_pixels or detect.batch_size * PIXELS_PER_SLOT
            batches = read_batches(members, tar.get, detect.batch_size, pixels, gpu)
            for images, failures in batches:
                results, faults = score_isolated(scorer, images)
                for key, values in results.items():
                    columns.setdefault(key, []).extend(values)
                for failure, fault in zip(failures, faults, strict=True):
                    failure = failure or fault
                    reasons.append(OK if failure is None else failure[0])
                    errors.append(None if failure is None else failure[1])
                # Let go of this batch's pixels before asking for the next: with the next one decoding ahead,
                # two batches are alive at a time, never three.
                del images, results
        status = [OK if reason == OK else FAILED for reason in reasons]
        outcome = {"detect_status": status, "detect_reason": reasons, "detect_error": errors}
        # Every declared column, typed, also for a shard with no live row (no batch ran: no scores at all).
        return frame_of(detect_columns(self.cfg.detect), {**columns, **outcome}, len(rows))

    def output_columns(self) -> dict[str, str]:
        return dtypes(detect_columns(self.cfg.detect))


def unlike(fingerprinted: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """Where the built detectors' identities differ from the fingerprinted ones (e.g. a worker whose weight file
    is not the client's), as "<detector> differs in <keys>". Weights the client did not have (`absent`) are not
    compared."""
    pairs = [(f"{family} {name}", wanted, built.get(family, {}).get(name)) for family in DETECTOR_FAMILIES
             for name, wanted in fingerprinted.get(family, {}).items()]  # fmt: skip
    pairs.append(("clip", fingerprinted["clip"], built["clip"]))
    drift = []
    for what, wanted, found in pairs:
        wanted, found = dict(wanted or {}), dict(found or {})
        if str(wanted.get("weights", "")).startswith(absent("")):
            wanted.pop("weights")
            found.pop("weights", None)
        keys = sorted(k for k in {*wanted, *found} if wanted.get(k) != found.get(k))
        if keys:
            drift.append(f"{what} differs in {', '.join(keys)}")
    return drift


# (reason, error text) for an image that could not be scored; None for one that was
Failure = tuple[str, str] | None


def score_isolated(scorer: Scorer, images: list[Image | None]) -> tuple[dict[str, list[Any]], list[Failure]]:
    """`scorer.score(images)`, and per image the fault that kept it from being scored. When the batch raises,
    each image is scored alone, so one bad image costs only its own row; an image that raises alone too gets
    the columns of an undecodable image (all None: ``score([None])`` runs no model) and ``internal_error``."""
    try:
        return scorer.score(images), [None] * len(images)
    except Exception as err:  # noqa: BLE001 - which image broke it is found below, one at a time
        if len(images) == 1:
            return scorer.score([None]), [(INTERNAL_ERROR, describe(err))]
    columns: dict[str, list[Any]] = {}
    faults: list[Failure] = []
    for image in images:
        try:
            results, fault = scorer.score([image]), None
        except Exception as err:  # noqa: BLE001 - the row's own outcome, never the shard's end
            results, fault = scorer.score([None]), (INTERNAL_ERROR, describe(err))
        for key, values in results.items():
            columns.setdefault(key, []).extend(values)
        faults.append(fault)
    return columns, faults


MISSING = ("decode_error", "KeyError: image missing from the shard's tar")


# one batch's encoded images, before decoding: (bytes or None, failure) per row
Encoded = list[tuple[bytes | None, Failure]]
K = TypeVar("K")  # what names an image to its reader: a tar member's name, an index


def decoded_batches(
    blobs: Sequence[bytes | None], size: int, gpu: str | None, pixels: int = 0
) -> Iterator[tuple[list[Image | None], list[str | None]]]:
    """`read_batches` over bytes already in memory (None: missing), with the error text alone per image: for
    callers that hold their images (bench/detect.py)."""
    for images, failures in read_batches(range(len(blobs)), blobs.__getitem__, size, pixels, gpu):
        yield images, [None if failure is None else failure[1] for failure in failures]


def read_batches(
    members: Sequence[K | None],
    read: Callable[[K], bytes | None],
    size: int,
    pixels: int,
    gpu: str | None,
) -> Iterator[tuple[list[Image | None], list[Failure]]]:
    """(images, failures) per batch, in order, for the tar `members` (None: the row has none). `read` gives a
    member's bytes (None: not in the tar). Batches hold at most `size` images and `pixels` pixels (0 = no pixel
    budget), counted from the image headers, so that a shard of huge photos is scored a few at a time. The next
    batch is read and decoded in a thread while the caller infers on this one; so at most two batches are alive,
    provided the caller lets go of each before asking for the next. `gpu`: the CUDA device whose nvJPEG decodes
    JPEGs, or None for PIL on the CPU. A missing member becomes an error, never a silent gap; an unforeseen
    exception while reading or decoding one image becomes that image's `internal_error`."""
    encoded = encoded_batches(members, read, size, pixels)

    def next_batch() -> tuple[list[Image | None], list[Failure], int] | None:
        # reading the bytes happens in the decoder thread too, so that it overlaps inference as well
        chunk = next(encoded, None)
        return (*_decode_chunk(chunk[0], gpu), chunk[1]) if chunk is not None else None

    with ThreadPoolExecutor(max_workers=1) as decoder:
        upcoming: Future[tuple[list[Image | None], list[Failure], int] | None] | None = decoder.submit(next_batch)
        while upcoming is not None and (loaded := upcoming.result()) is not None:
            images, failures, total = loaded
            del loaded  # before the next result() binds another batch here
            # An image over the budget is scored with nothing decoding beside it: at most one such photo and one
            # batch within the budget are alive at a time.
            upcoming = decoder.submit(next_batch) if not pixels or total <= pixels else None
            yield images, failures
            del images
            upcoming = upcoming or decoder.submit(next_batch)


def encoded_batches(
    members: Sequence[K | None], read: Callable[[K], bytes | None], size: int, pixels: int
) -> Iterator[tuple[Encoded, int]]:
    """The batches' bytes with their pixel counts, read one member at a time. The member that would overflow a
    batch opens the next, so an image over the pixel budget is a batch by itself."""
    batch: Encoded = []
    total = 0
    for member in members:
        data, count, failure = _read_member(member, read)
        if batch and (len(batch) >= size or (pixels > 0 and total + count > pixels)):
            yield batch, total
            batch, total = [], 0
        batch.append((data, failure))
        total += count
    if batch:
        yield batch, total


def _read_member(member: K | None, read: Callable[[K], bytes | None]) -> tuple[bytes | None, int, Failure]:
    """One member's bytes and pixel count (0 when its header is unreadable: decoding will say why)."""
    try:
        data = read(member) if member is not None else None
    except OSError:
        raise  # the disk or the tar failed (a member cut short): the shard's fault, which a retry may mend
    except Exception as err:  # noqa: BLE001 - anything else about one member is its row's fault, not the shard's
        return None, 0, (INTERNAL_ERROR, describe(err))
    if data is None:
        return None, 0, MISSING
    try:
        width, height = header_size(data)
    except Exception:  # noqa: BLE001 - counted as small; decoding reports the real error for this row
        return data, 0, None
    return data, width * height, None


def _decode_chunk(chunk: Encoded, gpu: str | None) -> tuple[list[Image | None], list[Failure]]:
    images: list[Image | None] = [None] * len(chunk)
    failures: list[Failure] = [failure for _, failure in chunk]
    present = [i for i, (data, failure) in enumerate(chunk) if data is not None and failure is None]
    decoded, why = _decode([chunk[i][0] or b"" for i in present], gpu)
    for i, image, failure in zip(present, decoded, why, strict=True):
        images[i], failures[i] = image, failure
    return images, failures


def _decode(blobs: list[bytes], gpu: str | None) -> tuple[list[Image | None], list[Failure]]:
    """Pixels per blob, or the reason it has none: decode_error for what a broken file raises, internal_error
    (with its traceback's tail) for anything else."""
    if gpu is not None:
        try:
            decoded, errors = decode_batch(blobs, gpu)
            return decoded, [None if e is None else ("decode_error", e) for e in errors]
        except Exception as err:  # noqa: BLE001 - find the image that broke the batch, one at a time
            if len(blobs) == 1:
                return [None], [(INTERNAL_ERROR, describe(err))]
            alone = [_decode([blob], gpu) for blob in blobs]
            return [a[0][0] for a in alone], [a[1][0] for a in alone]
    images: list[Image | None] = []
    failures: list[Failure] = []
    for blob in blobs:
        try:
            images.append(decode(blob))
            failures.append(None)
        except DECODE_ERRORS as err:
            images.append(None)
            failures.append(("decode_error", f"{type(err).__name__}: {str(err)[:200]}"))
        except Exception as err:  # noqa: BLE001 - this image's outcome, not the shard's
            images.append(None)
            failures.append((INTERNAL_ERROR, describe(err)))
    return images, failures

"""dedup: exact, near (pHash) and semantic (CLIP embedding) duplicates, and duplicates of reference sets.

Groups must be formed over the whole run, not per shard, so the stage has three steps:
1. features, a cached step per shard (a Dask task where its inputs changed): sha256 (from fetch), the pHash of
   the bytes, the hashes of its crop views and of the picture without borders, size, date and detect's CLIP
   embedding -> work/dedup/features/part-N.parquet (+ .json marker);
2. grouping, a cached run-wide step (curate.dedup.grouping): pairs from each method as Dask tasks over the
   features files, then in the client connected components, one representative per group (highest resolution,
   then earliest date, then smallest image_id) and reference matches -> work/dedup/assignments/part-N.parquet
   (+ work/dedup/assignments.json marker: every shard's features and the config);
3. per shard (the usual ShardStage step): each row gets dedup_group, dedup_of, dedup_status, dedup_reason.

Faults. An image Pillow cannot decode has no pHash and stays ok (exact and semantic duplicates still find it).
Anything else that raises while making one row's features (reading its member, hashing, checking its embedding)
makes that row `failed` / `internal_error`, with `curate.faults.describe` in `dedup_error`: it takes part in no
group, and the shard and the other rows go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from curate import pipeline
from curate.cache import fingerprint
from curate.config import CurateConfig
from curate.dedup import grouping
from curate.dedup.phash import grey_picture, hashes, low_frequencies, mirrored, trim_borders, view_thumbnails
from curate.detect.decoding import DECODE_ERRORS
from curate.faults import describe
from curate.io.atomic import read_parquet
from curate.io.tars import TarMembers
from curate.manifest import DEDUP, dtypes, frame_of
from curate.rundir import RunDir
from curate.schema import OK
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

UPSTREAM = pipeline.upstream("dedup")
FEATURES_VERSION = "3"  # 2: dedup_error, one row's fault; 3: crop views, pHash without borders
# Strongest evidence first: a group's reason is the strongest link that put a row in it.
METHODS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")


def work_dir(run: RunDir) -> Path:
    return run.root / "work" / "dedup"


def features_path(run: RunDir, shard: int) -> Path:
    return work_dir(run) / "features" / f"part-{shard:05d}.parquet"


def assignments_path(run: RunDir, shard: int) -> Path:
    return work_dir(run) / "assignments" / f"part-{shard:05d}.parquet"


class Features(NamedTuple):
    """One live row's features. `error` (set only on a fault) makes the row `failed` / `internal_error`."""

    phash: int = 0  # the 64 bits, unsigned
    phash_mirror: int = 0
    phash_ok: bool = False  # False: no pHash (the image could not be decoded, or the row failed)
    views: tuple[int, ...] = ()  # the distinct hashes of its crop views (curate.dedup.phash.VIEWS), unsigned
    trimmed: int = 0  # the pHash of the picture without its uniform borders (= phash when it has none)
    embedding: np.ndarray | None = None
    error: str | None = None


def shard_features(cfg: CurateConfig, shard: int) -> None:
    """Step 1 for one shard (a Dask task): the features of its rows that passed every earlier stage."""
    run = RunDir(Path(cfg.run.dir))
    rows = run.load_joined(shard, UPSTREAM)
    live = np.ones(len(rows), dtype=bool)
    for stage in UPSTREAM:
        live &= rows[f"{stage}_status"].eq(OK).fillna(False).to_numpy(dtype=bool)
    rows = rows[live].reset_index(drop=True)
    embeddings = rows["clip_embedding"] if "clip_embedding" in rows else pd.Series([None] * len(rows), dtype=object)
    # One member's bytes at a time (a 10k-image shard is GBs); a shard with nothing live (one an earlier stage
    # failed) never opens its tar, which may be what failed.
    with TarMembers(run.images(shard)) as tar:
        found = [
            image_features(tar, member, embedding)
            for member, embedding in zip(rows["tar_member"], embeddings, strict=True)
        ]
    found = _one_length(found)
    frame = _features_table(rows, shard, found, with_embeddings="clip_embedding" in rows)
    grouping.write_features(features_path(run, shard), frame)


def _one_length(found: list[Features]) -> list[Features]:
    """A shard's embeddings are stored as one fixed-size column: a row whose embedding has another length than
    the shard's first one fails alone (`internal_error`) instead of the shard."""
    lengths = [len(f.embedding) for f in found if f.embedding is not None]
    if len(set(lengths)) <= 1:
        return found
    expected = lengths[0]
    return [
        Features(error=f"ValueError: clip_embedding has {len(f.embedding)} dimensions, the shard's first {expected}")
        if f.embedding is not None and len(f.embedding) != expected
        else f
        for f in found
    ]


def _features_table(rows: pd.DataFrame, shard: int, found: list[Features], *, with_embeddings: bool) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].astype("string"),
            "shard": np.full(len(rows), shard, dtype=np.int64),
            "sha256": rows["sha256"].astype("string"),
            "phash": np.array([f.phash for f in found], dtype=np.uint64).view(np.int64),
            "phash_mirror": np.array([f.phash_mirror for f in found], dtype=np.uint64).view(np.int64),
            "phash_ok": np.array([f.phash_ok for f in found], dtype=bool),
            "trimmed_phash": np.array([f.trimmed for f in found], dtype=np.uint64).view(np.int64),
            "view_hashes": pd.Series([np.array(f.views, dtype=np.uint64).view(np.int64) for f in found], dtype=object),
            "width": rows["width"].astype("Int64"),
            "height": rows["height"].astype("Int64"),
            "date_taken": rows["date_taken"].astype("string"),
            "dedup_error": pd.Series([f.error for f in found], dtype="string"),
        }
    )
    if with_embeddings:
        frame["embedding"] = pd.Series([f.embedding for f in found], dtype=object)
    return frame


class Members(Protocol):
    """Where a shard's image bytes come from: its tar, or (benchmarks) a dict of bytes."""

    def get(self, name: str) -> bytes | None: ...


def features_of_images(ids: list[str], blobs: list[bytes], cfg: CurateConfig) -> pd.DataFrame:
    """The grouping's input for images held in memory (one shard, no dates, no embeddings): what the near-duplicate
    benchmark feeds `assign_groups`, through the same per-image code as the stage."""
    members = {image_id: data for image_id, data in zip(ids, blobs, strict=True)}
    found = [image_features(members, image_id, None) for image_id in ids]
    sizes = [_size(data) for data in blobs]
    return _features_table(
        pd.DataFrame(
            {
                "image_id": ids,
                "sha256": [hashlib.sha256(data).hexdigest() for data in blobs],
                "width": pd.array([w for w, _ in sizes], dtype="Int64"),
                "height": pd.array([h for _, h in sizes], dtype="Int64"),
                "date_taken": pd.array([None] * len(ids), dtype="string"),
            }
        ),
        0,
        found,
        with_embeddings=False,
    )


def _size(data: bytes) -> tuple[int | None, int | None]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except DECODE_ERRORS:
        return None, None


def image_features(tar: Members, member: object, embedding: Any) -> Features:
    """One live row's pHash (and its mirror's) and embedding. An image Pillow cannot decode gets no pHash and stays
    ok (it can still be an exact or a semantic duplicate); anything else that raises is this row's internal_error,
    never the shard's end."""
    # Outside the try, as in detect: an OSError reading the tar is the disk's or the tar's fault, the shard's,
    # which a retry of its task may mend.
    data = tar.get(member) if isinstance(member, str) else None
    try:
        if data is None:  # fetch wrote it and detect read it: its absence is a fault, not an undecodable image
            raise KeyError(f"{member!r} missing from the shard's tar")
        vector = _checked_embedding(embedding)
        try:
            grey = grey_picture(data)
            views = view_thumbnails(grey)
            trimmed = trim_borders(grey)
            trimmed_views = view_thumbnails(trimmed) if trimmed.size != grey.size else views[:0]
        except DECODE_ERRORS:  # what a broken file raises (curate.detect.decoding)
            return Features(embedding=vector)
        coefficients = low_frequencies(views)
        view_hashes = hashes(coefficients)
        trimmed_hashes = hashes(low_frequencies(trimmed_views)) if len(trimmed_views) else view_hashes
        full = int(view_hashes[0])  # VIEWS[0] is the whole picture: its pHash
        return Features(
            phash=full,
            phash_mirror=int(hashes(mirrored(coefficients[:1]))[0]),
            phash_ok=True,
            views=tuple(sorted({int(v) for v in (*view_hashes, *trimmed_hashes)})),
            trimmed=int(trimmed_hashes[0]),
            embedding=vector,
        )
    except Exception as err:  # noqa: BLE001 - one row's surprise is that row's outcome, never the shard's
        return Features(error=describe(err))


def _checked_embedding(value: Any) -> np.ndarray | None:
    """detect's CLIP embedding as a finite 1-D float32 vector (None: the row has none). A malformed one raises
    here, failing its own row, instead of in the run-wide grouping (np.stack, faiss) where it would stop every
    shard, or silently (NaN) in the faiss index the other rows are searched in."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN or NA: no embedding
        return None
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim != 1 or not len(vector) or not np.isfinite(vector).all():
        raise ValueError(f"clip_embedding is not a finite 1-D vector (shape {vector.shape})")
    if not np.any(vector):
        raise ValueError("clip_embedding is all zeros: it has no direction to compare")
    return vector


class _GroupingTaskFailed(Exception):
    """A task of the grouping failed after its retries (recorded in the stage's report by StageContext.map)."""


class DedupStage(ShardStage):
    name = "dedup"
    version = "3"  # 2: a row whose features raised is failed / internal_error; 3: grouped on the workers

    # -- steps 1 and 2 -----------------------------------------------------------------------------------------

    def prepare(self, ctx: StageContext) -> str | None:
        run = ctx.run
        shards = range(run.num_shards())
        features = ctx.shard_steps(
            "features",
            shard_features,
            made_from=lambda shard: {
                "version": FEATURES_VERSION,
                "inputs": {m: (run.read_marker(m, shard) or {}).get("output_sha256") for m in UPSTREAM},
            },
            output=partial(features_path, run),
        )
        if ctx.failed:
            return None  # the runner stops this stage: no grouping over missing features
        parts = [features_path(run, shard) for shard in shards]
        outputs = [assignments_path(run, shard) for shard in shards]

        def run_tasks(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
            key = f"dedup-{func.__name__}-{fingerprint(features)[:12]}"
            return ctx.map(func, tasks, desc=desc, key=key)

        def build() -> None:
            if not grouping.group(parts, outputs, self.cfg.dedup, run_tasks, work_dir(run) / "semantic"):
                raise _GroupingTaskFailed  # before the step's marker: a failed grouping is never recorded as done

        # every shard's result depends on every shard's features, through the groups
        made_from = {"inputs": features, "config": dataclasses.asdict(self.cfg.dedup), "version": self.version}
        try:
            return ctx.step("assignments", made_from, outputs, build)
        except _GroupingTaskFailed:
            return None  # its task's failure is in the stage's report: the runner stops the stage

    # -- step 3 ------------------------------------------------------------------------------------------------

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        assigned = read_parquet(assignments_path(run, shard)).set_index("image_id")
        frame = assigned.reindex(rows["image_id"].astype("string")).reset_index(drop=True)
        bits = frame["phash"]
        frame["phash"] = pd.Series(
            [None if pd.isna(v) else f"{int(v) & 0xFFFFFFFFFFFFFFFF:016x}" for v in bits], dtype="string"
        )
        return frame_of(DEDUP, frame, len(rows))

    def output_columns(self) -> dict[str, str]:
        return dtypes(DEDUP)


def assign_groups(features: pd.DataFrame, cfg: CurateConfig) -> pd.DataFrame:
    """The grouping of features held in memory (tests and benchmarks), by the stage's own code: the frame is
    written as one file per shard and grouped with its tasks run in this process. Rows in the frame's order, with
    its `shard` column; `phash` as int64."""
    with tempfile.TemporaryDirectory(prefix="curate-dedup-") as tmp:
        shards = sorted(int(s) for s in features["shard"].unique())
        parts, outputs = [], []
        for shard in shards:
            part = Path(tmp, f"features-{shard}.parquet")
            grouping.write_features(part, features[features["shard"] == shard].reset_index(drop=True))
            parts.append(part)
            outputs.append(Path(tmp, f"assignments-{shard}.parquet"))

        def run_here(func: Callable[..., Any], tasks: dict[Any, tuple[Any, ...]], desc: str) -> dict[Any, Any]:
            return {tag: func(*args) for tag, args in tasks.items()}

        grouping.group(parts, outputs, cfg.dedup, run_here, Path(tmp, "semantic"))
        out = pd.concat(
            [read_parquet(path).assign(shard=shard) for shard, path in zip(shards, outputs, strict=True)],
            ignore_index=True,
        )
    wanted = pd.Index(features["image_id"].astype("string"))
    return out.set_index("image_id", drop=False).loc[wanted].reset_index(drop=True)

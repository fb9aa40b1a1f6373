"""dedup: exact, near (pHash) and semantic (CLIP embedding) duplicates, and duplicates of reference sets.

Groups must be formed over the whole run, not per shard, so the stage has three steps:
1. features, a cached step per shard (a Dask task where its inputs changed): sha256 (from fetch), the pHash of
   the bytes, size, date and detect's CLIP embedding -> work/dedup/features/part-N.parquet (+ .json marker);
2. grouping, a cached run-wide step in the client: pairs from each method, connected components, one
   representative per group (highest resolution, then earliest date, then smallest image_id), reference
   matches -> work/dedup/assignments/part-N.parquet (+ work/dedup/assignments.json marker: every shard's
   features and the config);
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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from curate import pipeline
from curate.config import CurateConfig
from curate.dedup import embeddings as embedding_search
from curate.dedup import hamming_index
from curate.dedup.groups import components, representatives
from curate.dedup.phash import hashes, low_frequencies, mirrored, thumbnail
from curate.dedup.references import load as load_reference
from curate.detect.decoding import DECODE_ERRORS
from curate.faults import INTERNAL_ERROR, describe
from curate.io.atomic import read_parquet, write_parquet
from curate.io.tars import TarMembers
from curate.manifest import DEDUP, dtypes, frame_of
from curate.rundir import RunDir
from curate.schema import FAILED, OK, REJECTED
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

UPSTREAM = pipeline.upstream("dedup")
FEATURES_VERSION = "2"  # 2: dedup_error, one row's fault
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
    frame = _features_table(rows, shard, found, with_embeddings="clip_embedding" in rows)
    write_parquet(features_path(run, shard), frame)


def _features_table(rows: pd.DataFrame, shard: int, found: list[Features], *, with_embeddings: bool) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].astype("string"),
            "shard": np.full(len(rows), shard, dtype=np.int64),
            "sha256": rows["sha256"].astype("string"),
            "phash": np.array([f.phash for f in found], dtype=np.uint64).view(np.int64),
            "phash_mirror": np.array([f.phash_mirror for f in found], dtype=np.uint64).view(np.int64),
            "phash_ok": np.array([f.phash_ok for f in found], dtype=bool),
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
            thumb = thumbnail(data)
        except DECODE_ERRORS:  # what a broken file raises (curate.detect.decoding)
            return Features(embedding=vector)
        coefficients = low_frequencies(thumb[None])
        return Features(int(hashes(coefficients)[0]), int(hashes(mirrored(coefficients))[0]), True, vector)
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
    return vector


class DedupStage(ShardStage):
    name = "dedup"
    version = "2"  # 2: a row whose features raised is failed / internal_error, with dedup_error

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
        parts = [assignments_path(run, shard) for shard in shards]

        def group() -> None:
            every = pd.concat([read_parquet(features_path(run, s)) for s in shards], ignore_index=True)
            assigned = assign_groups(every, self.cfg)
            for shard, path in enumerate(parts):  # one file per shard: a shard task reads only its own
                write_parquet(path, assigned[assigned["shard"] == shard].drop(columns="shard").reset_index(drop=True))

        # every shard's result depends on every shard's features, through the groups
        made_from = {"inputs": features, "config": dataclasses.asdict(self.cfg.dedup), "version": self.version}
        return ctx.step("assignments", made_from, parts, group)

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
    """Step 2: every row's group, representative, status and reason."""
    d = cfg.dedup
    n = len(features)
    failed = features["dedup_error"].notna().to_numpy(dtype=bool)
    # A row whose features raised links to nothing and matches no reference: grouped by what it has (its sha256)
    # it could be the representative, and its copies rejected for a row that is not released either.
    features = features.assign(
        # shards without a live row have typeless columns: after the concat a bool column may come back as float
        phash_ok=features["phash_ok"].fillna(False).astype(bool) & ~failed,
        sha256=features["sha256"].mask(failed),
    )
    links: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if d.exact and n:
        codes = pd.factorize(features["sha256"].fillna(features["image_id"]))[0]
        first = pd.Series(np.arange(n)).groupby(codes).transform("min").to_numpy()
        links["exact_duplicate"] = (first[first != np.arange(n)], np.arange(n)[first != np.arange(n)])
    hashed = np.nonzero(features["phash_ok"].to_numpy())[0]
    values = features["phash"].to_numpy().view(np.uint64)
    if d.phash_distance >= 0 and len(hashed):
        i, j = hamming_index.near_pairs(values[hashed], d.phash_distance)
        pairs_i, pairs_j = [hashed[i]], [hashed[j]]
        if d.flip:
            q, f = hamming_index.matches(values[hashed], features["phash_mirror"].to_numpy().view(np.uint64)[hashed],
                                         d.phash_distance)  # fmt: skip
            other = q != f
            pairs_i.append(hashed[q[other]])
            pairs_j.append(hashed[f[other]])
        links["near_duplicate"] = (np.concatenate(pairs_i), np.concatenate(pairs_j))
    vectors, embedded = _embeddings(features)
    if d.embedding_cosine > 0 and len(embedded) > 1:
        i, j = embedding_search.similar_pairs(vectors, d.embedding_cosine, d.flat_max, d.ivf_nprobe)
        links["semantic_duplicate"] = (embedded[i], embedded[j])

    all_i = np.concatenate([p[0] for p in links.values()]) if links else np.zeros(0, np.int64)
    all_j = np.concatenate([p[1] for p in links.values()]) if links else np.zeros(0, np.int64)
    label = components(n, all_i.astype(np.int64), all_j.astype(np.int64))
    rep = representatives(features, label) if n else np.zeros(0, np.int64)
    size = np.bincount(label, minlength=n)[label] if n else np.zeros(0, np.int64)
    # A duplicate's reason: the strongest method that links anything in its group.
    group_reason = np.full(n, "", dtype=object)
    for method in reversed(METHODS):
        if method in links and len(links[method][0]):
            group_reason[np.unique(label[links[method][0]])] = method
    reason = np.where(rep == np.arange(n), OK, group_reason[label])
    status = np.where(reason == OK, OK, REJECTED)
    image_ids = features["image_id"].to_numpy(dtype=object)
    rep_ids = image_ids[rep] if n else np.zeros(0, dtype=object)
    group = rep_ids.copy()
    group[size <= 1] = None
    dedup_of = rep_ids.copy()
    dedup_of[rep == np.arange(n)] = None
    out = pd.DataFrame(
        {
            "image_id": features["image_id"].astype("string"),
            "shard": features["shard"],
            # the 64 bits as int64 here; each shard task writes them as 16 hex digits (see process)
            "phash": features["phash"].to_numpy(),
            "dedup_group": pd.Series(group, dtype="string"),
            "dedup_of": pd.Series(dedup_of, dtype="string"),
            "dedup_match": pd.array([None] * n, dtype="string"),
            "dedup_status": status.astype(object),
            "dedup_reason": reason.astype(object),
        }
    )
    _mark_reference_duplicates(out, features, values, hashed, vectors, embedded, label, cfg)
    out["phash"] = pd.array(out["phash"].to_numpy(), dtype="Int64")
    out.loc[~features["phash_ok"].to_numpy(), "phash"] = pd.NA
    out["dedup_error"] = features["dedup_error"].astype("string").to_numpy()
    out.loc[failed, "dedup_status"] = FAILED
    out.loc[failed, "dedup_reason"] = INTERNAL_ERROR
    return out


def _embeddings(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if "embedding" not in features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    present = np.nonzero(features["embedding"].notna().to_numpy())[0]
    if not len(present):
        return np.zeros((0, 0), np.float32), present
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in features["embedding"].iloc[present]])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, present


def _mark_reference_duplicates(
    out: pd.DataFrame,
    features: pd.DataFrame,
    values: np.ndarray,
    hashed: np.ndarray,
    vectors: np.ndarray,
    embedded: np.ndarray,
    label: np.ndarray,
    cfg: CurateConfig,
) -> None:
    """A group with any member matching a reference set is rejected whole: its other members are near copies
    of a test image too."""
    d = cfg.dedup
    match = np.full(len(out), None, dtype=object)
    for ref_cfg in d.references:
        ref = load_reference(ref_cfg)
        hit = features["sha256"].isin(ref.sha256).to_numpy()
        match[hit & (match == None)] = f"{ref.name}:sha256"  # noqa: E711 - elementwise on an object array
        if len(ref.phash) and len(hashed) and d.phash_distance >= 0:
            q, _ = hamming_index.matches(ref.phash, values[hashed], d.phash_distance)
            rows = hashed[np.unique(q)]
            match[rows[match[rows] == None]] = f"{ref.name}:phash"  # noqa: E711
        if ref.embeddings is not None and len(embedded) and d.embedding_cosine > 0:
            q, _ = embedding_search.matches(ref.embeddings, vectors, d.embedding_cosine)
            rows = embedded[np.unique(q)]
            match[rows[match[rows] == None]] = f"{ref.name}:embedding"  # noqa: E711
    matched = match != None  # noqa: E711
    if not matched.any():
        return
    tainted = np.isin(label, label[matched])
    out.loc[matched, "dedup_match"] = match[matched]
    out.loc[tainted, "dedup_status"] = REJECTED
    out.loc[tainted, "dedup_reason"] = "reference_duplicate"

"""dedup: exact, near (pHash) and semantic (CLIP embedding) duplicates, and duplicates of reference sets.

Groups must be formed over the whole run, not per shard, so the stage has three steps:
1. features, a cached step per shard (a Dask task where its inputs changed): sha256 (from fetch), the pHash of
   the bytes, size, date and detect's CLIP embedding -> work/dedup/features/part-N.parquet (+ .json marker);
2. grouping, a cached run-wide step in the client: pairs from each method, connected components, one
   representative per group (highest resolution, then earliest date, then smallest image_id), reference
   matches -> work/dedup/assignments/part-N.parquet (+ work/dedup/assignments.json marker: every shard's
   features and the config);
3. per shard (the usual ShardStage step): each row gets dedup_group, dedup_of, dedup_status, dedup_reason.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from curate import pipeline
from curate.config import CurateConfig
from curate.dedup import embeddings as embedding_search
from curate.dedup import hamming_index
from curate.dedup.groups import components, representatives
from curate.dedup.phash import hashes, low_frequencies, mirrored, thumbnail
from curate.dedup.references import load as load_reference
from curate.io.atomic import read_parquet, write_parquet
from curate.io.tars import TarMembers
from curate.manifest import DEDUP, dtypes, frame_of
from curate.rundir import RunDir
from curate.schema import OK, REJECTED
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

UPSTREAM = pipeline.upstream("dedup")
FEATURES_VERSION = "1"
# Strongest evidence first: a group's reason is the strongest link that put a row in it.
METHODS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")


def work_dir(run: RunDir) -> Path:
    return run.root / "work" / "dedup"


def features_path(run: RunDir, shard: int) -> Path:
    return work_dir(run) / "features" / f"part-{shard:05d}.parquet"


def assignments_path(run: RunDir, shard: int) -> Path:
    return work_dir(run) / "assignments" / f"part-{shard:05d}.parquet"


def shard_features(cfg: CurateConfig, shard: int) -> None:
    """Step 1 for one shard (a Dask task): the features of its rows that passed every earlier stage."""
    run = RunDir(Path(cfg.run.dir))
    rows = run.load_joined(shard, UPSTREAM)
    live = np.ones(len(rows), dtype=bool)
    for stage in UPSTREAM:
        live &= rows[f"{stage}_status"].eq(OK).fillna(False).to_numpy(dtype=bool)
    rows = rows[live].reset_index(drop=True)
    thumbs, ok = [], []
    members = list(rows["tar_member"])
    # One member's bytes at a time (a 10k-image shard is GBs); a shard with nothing live (one an earlier stage
    # failed) never opens its tar, which may be what failed.
    with TarMembers(run.images(shard)) as tar:
        for member in members:
            try:
                data = tar.get(member) if isinstance(member, str) else None
                if data is None:
                    raise KeyError(f"{member!r} missing from the shard's tar")
                thumbs.append(thumbnail(data))
                ok.append(True)
            except Exception:  # noqa: BLE001 - one undecodable image gets no pHash (phash_ok=False); the shard goes on
                thumbs.append(np.zeros((32, 32)))
                ok.append(False)
    coefficients = low_frequencies(np.stack(thumbs)) if thumbs else np.zeros((0, 8, 8))
    frame = pd.DataFrame(
        {
            "image_id": rows["image_id"].astype("string"),
            "shard": np.full(len(rows), shard, dtype=np.int64),
            "sha256": rows["sha256"].astype("string"),
            "phash": hashes(coefficients).view(np.int64),
            "phash_mirror": hashes(mirrored(coefficients)).view(np.int64),
            "phash_ok": ok,
            "width": rows["width"].astype("Int64"),
            "height": rows["height"].astype("Int64"),
            "date_taken": rows["date_taken"].astype("string"),
        }
    )
    if "clip_embedding" in rows:
        frame["embedding"] = rows["clip_embedding"]
    write_parquet(features_path(run, shard), frame)


class DedupStage(ShardStage):
    name = "dedup"
    version = "1"

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
    # shards without a live row have typeless columns: after the concat a bool column may come back as float
    features = features.assign(phash_ok=features["phash_ok"].fillna(False).astype(bool))
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

"""dedup's run-wide grouping, done on the workers: the client holds pairs, never the features.

Input: one features file per shard (Parquet, written by the stage's first step). A row's *position* is its place in
the run: the shard's offset (the rows of the shards before it) plus its row in the shard's file. The steps:

1. Pair tasks, each reading from every shard's file only the columns it needs, part by part:
   exact (one task: the sha256 digests, 32 bytes a row), near (one task per chunk table of the multi-index Hamming
   search, for the pHash, its mirror and the crop views: curate.dedup.hamming_index), semantic (one task over the
   embeddings) and reference sets (one task: each set is loaded once). Each returns position pairs.
2. The client: connected components over the positions (an int64 array per row: 32 MB at 4M rows), the strongest
   method linking each group, and the representative of each group of two or more, from the size, date and id of
   only the rows in such groups.
3. The client writes each shard's assignments from that shard's file alone.

The result is the same as grouping every feature at once in one process (tests/test_dedup_golden.py: the groups
the in-client grouping gave on a fixed set), and does not depend on the order in which tasks finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import DedupConfig
from curate.dedup import embedding_store, hamming_index
from curate.dedup import embeddings as embedding_search
from curate.dedup.groups import components, representatives
from curate.dedup.phash import VIEWS
from curate.dedup.references import load as load_reference
from curate.dedup.semantic import semantic_pairs
from curate.faults import INTERNAL_ERROR
from curate.io.atomic import atomic_path, write_parquet
from curate.schema import FAILED, OK, REJECTED

# Strongest evidence first: a group's reason is the strongest link that put a row in it.
METHODS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")
Pairs = tuple[np.ndarray, np.ndarray]
# run_tasks(func, {tag: args}, desc) -> {tag: func(*args)}: the stage runs them as Dask tasks.
RunTasks = Callable[[Callable[..., Any], dict[Any, tuple[Any, ...]], str], dict[Any, Any]]
NO_PAIRS: Pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64))
VIEW_BLOCK = 1_000_000  # rows whose views one task searches (per chunk table)


def offsets(parts: list[Path]) -> np.ndarray:
    """Each part's first position, and the total at the end (from the files' metadata, not their data)."""
    counts = [pq.ParquetFile(path).metadata.num_rows for path in parts]
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _columns(parts: list[Path], columns: list[str]) -> Iterator[tuple[int, pd.DataFrame]]:
    """(offset, those columns of the part) for every part that has rows, one part at a time."""
    start = 0
    for path in parts:
        available = set(pq.ParquetFile(path).schema_arrow.names)
        frame = pq.read_table(path, columns=[c for c in columns if c in available]).to_pandas()
        if len(frame):
            yield start, frame
        start += len(frame)


def _live(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose features did not fail (a failed row links to nothing and matches no reference)."""
    return frame["dedup_error"].isna().to_numpy(dtype=bool)


def _hashed(frame: pd.DataFrame) -> np.ndarray:
    return frame["phash_ok"].fillna(False).to_numpy(dtype=bool) & _live(frame)


# -- step 1: the pair tasks ------------------------------------------------------------------------------------


def exact_pairs(parts: list[Path]) -> Pairs:
    """(first position, later position) for every row whose sha256 an earlier row has."""
    digests, positions = [], []
    for start, frame in _columns(parts, ["sha256", "dedup_error"]):
        keep = _live(frame) & frame["sha256"].notna().to_numpy(dtype=bool)
        # 64 hex digits as 64 bytes: exact equality, a sixth of the memory of Python strings
        digests.append(np.array(frame["sha256"][keep].tolist(), dtype="S64"))
        positions.append(start + np.nonzero(keep)[0])
    if not digests:
        return NO_PAIRS
    every, where = np.concatenate(digests), np.concatenate(positions)
    _, codes = np.unique(every, return_inverse=True)
    order = np.lexsort((where, codes))
    codes, where = codes[order], where[order]
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    heads = where[first][np.cumsum(first) - 1]
    later = ~first
    return heads[later], where[later]


def _hashes(parts: list[Path], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, positions) of the rows with a pHash."""
    values, positions = [], []
    for start, frame in _columns(parts, [column, "phash_ok", "dedup_error"]):
        keep = _hashed(frame)
        values.append(frame[column].to_numpy()[keep].view(np.uint64))
        positions.append(start + np.nonzero(keep)[0])
    if not values:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(values), np.concatenate(positions)


def _views(parts: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes of every crop view, the position each belongs to). The lists are read as Arrow's flat values
    and offsets: a Python object per row would cost more than the hashes."""
    values, positions = [], []
    start = 0
    for path in parts:
        if "view_hashes" not in pq.ParquetFile(path).schema_arrow.names:  # features made without crop views
            start += pq.ParquetFile(path).metadata.num_rows  # (a benchmark's synthetic hashes)
            continue
        table = pq.read_table(path, columns=["view_hashes", "phash_ok", "dedup_error"])
        lists = table.column("view_hashes").combine_chunks()
        if not pa.types.is_list(lists.type):  # no row with views: pandas wrote an all-null column
            start += len(table)
            continue
        keep = _hashed(table.drop_columns(["view_hashes"]).to_pandas())
        counts = np.diff(lists.offsets.to_numpy())
        flat = lists.values.to_numpy()[np.repeat(keep, counts)]
        values.append(flat.view(np.uint64))
        positions.append(np.repeat(start + np.nonzero(keep)[0], counts[keep]))
        start += len(table)
    if not values:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(values), np.concatenate(positions)


def near_pairs(
    parts: list[Path], kind: str, distance: int, chunk: int, m: int, askers: tuple[int, int] | None = None
) -> Pairs:
    """One chunk table's share of the near-duplicate pairs of one kind:
    `phash`: two pHashes within `distance`; `mirror`: a mirror hash within `distance` of another row's pHash;
    `views`: a row's full view (its pHash, or its pHash without borders) within `distance` of a crop view of
    another row, for the rows at positions `askers` (lo, hi) only: the search with the most to compare (every row has
    several views) is split by chunk and by block of rows, so that more workers finish it sooner."""
    if kind == "phash":
        values, where = _hashes(parts, "phash")
        i, j = hamming_index.near_pairs(values, distance, chunk, m)
        return where[i], where[j]
    if kind == "mirror":
        values, where = _hashes(parts, "phash")
        mirrors, _ = _hashes(parts, "phash_mirror")
        q, f = hamming_index.matches(values, mirrors, distance, chunk, m)
        other = q != f
        return where[q[other]], where[f[other]]
    views, owners = _views(parts)
    full, full_where = _hashes(parts, "phash")
    trimmed, trimmed_where = _hashes(parts, "trimmed_phash") if views.size else (full[:0], full_where[:0])
    differs = trimmed != full[np.searchsorted(full_where, trimmed_where)] if trimmed.size else np.zeros(0, bool)
    queries = np.concatenate([full, trimmed[differs]])
    asking = np.concatenate([full_where, trimmed_where[differs]])
    if askers is not None:
        mine = (asking >= askers[0]) & (asking < askers[1])
        queries, asking = queries[mine], asking[mine]
    q, f = hamming_index.matches(views, queries, distance, chunk, m)
    a, b = asking[q], owners[f]
    other = a != b
    return np.minimum(a, b)[other], np.maximum(a, b)[other]


def write_features(path: Path, frame: pd.DataFrame) -> None:
    """One shard's features file. The embeddings (a column of vectors or None) are stored as float16 unit vectors
    (curate.dedup.embedding_store: two bytes a dimension, a null for a row with none)."""
    if "embedding" not in frame:
        write_parquet(path, frame)
        return
    vectors = frame["embedding"].tolist()
    present = np.array([v is not None for v in vectors], dtype=bool)
    dim = next((len(v) for v in vectors if v is not None), 1)
    stacked = np.ones((len(vectors), dim), dtype=np.float32)  # ones: a direction for the rows encode leaves null
    if present.any():
        stacked[present] = np.stack([np.asarray(v, dtype=np.float32) for v in vectors if v is not None])
    table = pa.Table.from_pandas(frame.drop(columns="embedding"), preserve_index=False)
    table = table.append_column("embedding", embedding_store.encode(stacked, present))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", **embedding_store.parquet_options(table, ["embedding"]))


def _embeddings(parts: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float32 vectors, positions) of the rows with an embedding (small sets: the exact search and the
    reference sets)."""
    vectors, positions = [], []
    start = 0
    for path in parts:
        rows = pq.ParquetFile(path).metadata.num_rows
        if "embedding" in pq.ParquetFile(path).schema_arrow.names and rows:
            table = pq.read_table(path, columns=["embedding", "dedup_error"])
            found, where = embedding_store.decode(table.column("embedding"))
            live = _live(table.select(["dedup_error"]).to_pandas())[where]
            vectors.append(np.asarray(found[live], dtype=np.float32))
            positions.append(start + where[live])
        start += rows
    if not vectors or not sum(len(v) for v in vectors):
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    stacked = np.concatenate(vectors)
    stacked /= np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-12)
    return stacked, np.concatenate(positions)


def exact_semantic_pairs(parts: list[Path], settings: DedupConfig) -> Pairs:
    """Every pair at or above dedup.embedding_cosine, exactly (one task: sets up to dedup.flat_max rows)."""
    vectors, where = _embeddings(parts)
    if len(where) < 2:
        return NO_PAIRS
    # flat_max = the set's size: faiss's exact flat index (only sets up to dedup.flat_max come here)
    i, j = embedding_search.similar_pairs(vectors, settings.embedding_cosine, flat_max=len(vectors), nprobe=1)
    return where[i], where[j]


def _embedded_rows(parts: list[Path]) -> int:
    """Rows with an embedding, from the files' column statistics (null counts) where they have them."""
    total = 0
    for path in parts:
        meta = pq.ParquetFile(path).metadata
        names = pq.ParquetFile(path).schema_arrow.names
        if "embedding" not in names:
            continue
        column = names.index("embedding")
        for group in range(meta.num_row_groups):
            chunk = meta.row_group(group).column(column)
            nulls = chunk.statistics.null_count if chunk.statistics is not None else 0
            total += meta.row_group(group).num_rows - (nulls or 0)
    return total


def reference_matches(parts: list[Path], settings: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(positions, `<set>:sha256|phash|embedding`) of the rows that match a reference set: the first set listed,
    then by sha256, pHash, embedding, names a row's match. Each set is loaded once, then the parts go past it."""
    found: dict[int, str] = {}
    for ref_cfg in settings.references:
        ref = load_reference(ref_cfg)
        for start, frame in _columns(parts, ["sha256", "phash", "phash_ok", "embedding", "dedup_error"]):
            live = _live(frame)
            for row in np.nonzero(frame["sha256"].isin(ref.sha256).to_numpy() & live)[0]:
                found.setdefault(int(start + row), f"{ref.name}:sha256")
            hashed = np.nonzero(_hashed(frame))[0]
            if len(ref.phash) and len(hashed) and settings.phash_distance >= 0:
                values = frame["phash"].to_numpy()[hashed].view(np.uint64)
                q, _ = hamming_index.matches(ref.phash, values, settings.phash_distance)
                for row in hashed[np.unique(q)]:
                    found.setdefault(int(start + row), f"{ref.name}:phash")
        if ref.embeddings is not None and settings.embedding_cosine > 0:
            vectors, where = _embeddings(parts)
            if len(where):
                q, _ = embedding_search.matches(ref.embeddings, vectors, settings.embedding_cosine)
                for position in where[np.unique(q)]:
                    found.setdefault(int(position), f"{ref.name}:embedding")
    positions = np.array(sorted(found), dtype=np.int64)
    return positions, np.array([found[int(p)] for p in positions], dtype=object)


def pair_tasks(
    parts: list[Path], settings: DedupConfig, n: int
) -> dict[Any, tuple[Callable[..., Any], tuple[Any, ...]]]:
    """Every pair task the settings ask for: tag -> (function, arguments)."""
    tasks: dict[Any, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
    if settings.exact:
        tasks[("exact_duplicate", "sha256", 0)] = (exact_pairs, (parts,))
    if settings.phash_distance >= 0:
        kinds = ["phash", "mirror"] if settings.flip else ["phash"]
        for kind in kinds:
            m = hamming_index.chunks(n, n, settings.phash_distance)
            for chunk in range(m):
                tasks[("near_duplicate", kind, chunk)] = (near_pairs, (parts, kind, settings.phash_distance, chunk, m))
    if settings.crop_distance >= 0 and settings.phash_distance >= 0:  # phash_distance=-1: no near duplicates at all
        m = hamming_index.chunks(n * len(VIEWS), n, settings.crop_distance)
        for chunk in range(m):
            for lo in range(0, max(n, 1), VIEW_BLOCK):
                args = (parts, "views", settings.crop_distance, chunk, m, (lo, lo + VIEW_BLOCK))
                tasks[("near_duplicate", "views", chunk * n + lo)] = (near_pairs, args)
    if settings.embedding_cosine > 0 and _embedded_rows(parts) <= settings.flat_max:
        tasks[("semantic_duplicate", "embedding", 0)] = (exact_semantic_pairs, (parts, settings))
    if settings.references:
        tasks[("reference", "", 0)] = (reference_matches, (parts, settings))
    return tasks


# -- steps 2 and 3: in the client --------------------------------------------------------------------------------


def group(parts: list[Path], outputs: list[Path], settings: DedupConfig, run_tasks: RunTasks, work: Path) -> bool:
    """Write every shard's assignments (`outputs`, one per part). False when a task failed (its failure is in the
    stage's report and nothing is written). `work`: a folder for the clustered semantic search's files."""
    starts = offsets(parts)
    n = int(starts[-1])
    tasks = pair_tasks(parts, settings, n)
    if settings.embedding_cosine > 0 and ("semantic_duplicate", "embedding", 0) not in tasks:
        try:  # beyond dedup.flat_max: SemDeDup-style clusters, three rounds of tasks (curate.dedup.semantic)
            semantic = semantic_pairs(parts, "embedding", settings.embedding_cosine, work, run_tasks)
        except RuntimeError:  # a task of its rounds failed: recorded in the stage's report
            return False
        by_tag_semantic = {("semantic_duplicate", "clusters", 0): semantic}
    else:
        by_tag_semantic = {}
    by_tag = {tag: args for tag, (_, args) in tasks.items()}
    results: dict[Any, Any] = {}
    for func in dict.fromkeys(func for func, _ in tasks.values()):  # one map per kind of task
        mine = {tag: by_tag[tag] for tag, (f, _) in tasks.items() if f is func}
        got = run_tasks(func, mine, f"dedup {func.__name__.replace('_', ' ')}")
        if len(got) != len(mine):
            return False
        results.update(got)
    results.update(by_tag_semantic)
    links: dict[str, list[Pairs]] = {method: [] for method in METHODS}
    for (method, _, _), pairs in sorted(results.items(), key=lambda item: item[0]):
        if method in links:
            links[method].append(pairs)
    joined = {method: _unique(pairs, n) for method, pairs in links.items() if pairs}
    label = components(
        n,
        np.concatenate([p[0] for p in joined.values()] or [np.zeros(0, np.int64)]).astype(np.int64),
        np.concatenate([p[1] for p in joined.values()] or [np.zeros(0, np.int64)]).astype(np.int64),
    )
    size = np.bincount(label, minlength=n)[label] if n else np.zeros(0, np.int64)
    # the strongest method linking anything in a group, by its label (codes: 1 = METHODS[0] ... 0 = none)
    strength = np.zeros(n, dtype=np.int8)
    for code, method in reversed(list(enumerate(METHODS, start=1))):
        if method in joined and len(joined[method][0]):
            strength[np.unique(label[joined[method][0]])] = code
    grouped = np.nonzero(size > 1)[0]
    members = _members(parts, grouped)
    rep = np.arange(n, dtype=np.int64)
    rep[grouped] = grouped[representatives(members, np.searchsorted(grouped, label[grouped]))]
    names = pd.Series(members["image_id"].to_numpy(dtype=object), index=grouped)
    matched, match_names = results.get(("reference", "", 0), (np.zeros(0, np.int64), np.zeros(0, object)))
    tainted = np.isin(label, label[matched]) if len(matched) else np.zeros(n, dtype=bool)
    for shard, (path, output) in enumerate(zip(parts, outputs, strict=True)):
        rows = slice(int(starts[shard]), int(starts[shard + 1]))
        write_parquet(
            output, _assignments(path, rows, label, rep, size, strength, names, matched, match_names, tainted)
        )
    return True


def _unique(pairs: list[Pairs], n: int) -> Pairs:
    keys = np.unique(np.concatenate([np.minimum(i, j) * n + np.maximum(i, j) for i, j in pairs]))
    return keys // max(n, 1), keys % max(n, 1)


def _where(keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values where keep, None elsewhere (object arrays)."""
    out = np.full(len(values), None, dtype=object)
    out[keep] = values[keep]
    return out


def _members(parts: list[Path], grouped: np.ndarray) -> pd.DataFrame:
    """image_id, width, height and date_taken of the rows at `grouped` (sorted positions), in that order."""
    frames = []
    for start, frame in _columns(parts, ["image_id", "width", "height", "date_taken"]):
        inside = grouped[(grouped >= start) & (grouped < start + len(frame))] - start
        frames.append(frame.iloc[inside])
    columns = {"image_id": "string", "width": "Int64", "height": "Int64", "date_taken": "string"}
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    return pd.concat(frames, ignore_index=True).astype(columns)


def _assignments(
    path: Path,
    rows: slice,
    label: np.ndarray,
    rep: np.ndarray,
    size: np.ndarray,
    strength: np.ndarray,
    names: pd.Series,
    matched: np.ndarray,
    match_names: np.ndarray,
    tainted: np.ndarray,
) -> pd.DataFrame:
    """One shard's rows: group, representative, match, status and reason."""
    frame = pq.read_table(path, columns=["image_id", "phash", "phash_ok", "dedup_error"]).to_pandas()
    count = len(frame)
    positions = np.arange(rows.start, rows.stop, dtype=np.int64)
    mine_rep, mine_size = rep[rows], size[rows]
    is_rep = mine_rep == positions
    rep_ids = np.full(count, None, dtype=object)
    in_group = mine_size > 1
    rep_ids[in_group] = names.reindex(mine_rep[in_group]).to_numpy(dtype=object)
    reason = np.array(("ok", *METHODS), dtype=object)[strength[label[rows]]]
    reason[is_rep] = OK
    status = np.where(reason == OK, OK, REJECTED).astype(object)
    match = np.full(count, None, dtype=object)
    here = (matched >= rows.start) & (matched < rows.stop)
    match[matched[here] - rows.start] = match_names[here]
    status[tainted[rows]] = REJECTED
    reason[tainted[rows]] = "reference_duplicate"
    failed = frame["dedup_error"].notna().to_numpy(dtype=bool)
    status[failed], reason[failed] = FAILED, INTERNAL_ERROR
    hashed = frame["phash_ok"].fillna(False).to_numpy(dtype=bool) & ~failed
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"].astype("string"),
            # the 64 bits as int64 here; each shard task writes them as 16 hex digits
            "phash": pd.array(np.where(hashed, frame["phash"].to_numpy(), 0), dtype="Int64"),
            "dedup_group": pd.Series(_where(in_group, rep_ids), dtype="string"),
            "dedup_of": pd.Series(_where(~is_rep, rep_ids), dtype="string"),
            "dedup_match": pd.Series(match, dtype="string"),
            "dedup_status": status,
            "dedup_reason": reason,
            "dedup_error": frame["dedup_error"].astype("string"),
        }
    )
    out.loc[~hashed, "phash"] = pd.NA
    return out

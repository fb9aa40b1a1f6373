"""ingest: read candidates from a source and fix the shard layout for the whole run.

Distributed in steps. A large plain input file is cut into byte ranges, and one cheap task per range counts
its newlines so that every range knows its first line number. Then one task per unit (a file, a byte range,
an API query) reads it batch by batch and writes each batch at once, sorted by shard (a hash of `image_id`),
as an Arrow IPC file with one record batch per shard: a read task holds one batch, never its whole input.
Then one task per shard streams its record batches out of every batch file in unit, range and line order,
marks repeated ids, and writes the shard's part and marker. The order, and so the bytes, of every part are
the same whatever the split into ranges and batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from curate.cache import fingerprint
from curate.config import CurateConfig, Source
from curate.io.atomic import atomic_path, write_json
from curate.rundir import RunDir
from curate.runner import StageContext, write_marker
from curate.schema import CANDIDATE_SCHEMA, OK, REJECTED, check_reasons
from curate.sources import (
    Unit,
    byte_ranges,
    count_newlines,
    display,
    expand_inputs,
    unit_fingerprint,
)
from curate.sources.readers import describe_file, read_unit
from curate.stages.base import ShardStage

NAME = "ingest"
VERSION = "3"  # photo_hash by PASS's rule for every source with a URL (a run whose parts do not change redoes nothing)
# A plain file larger than this is read as several byte ranges in parallel (speed only: the output is the same).
RANGE_BYTES = 256 * 2**20
# Rows per row group of a part, fixed so that the bytes do not depend on where batches and ranges fell.
ROW_GROUP_ROWS = 65_536
BUCKETS = "_ingest_buckets"

log = logging.getLogger(__name__)

# (path of a batch file, indices of the record batches in it that belong to the shard)
Pieces = list[tuple[str, list[int]]]


def shard_numbers(image_ids: list[Any], num_shards: int) -> np.ndarray:
    """Stable across runs and machines (unlike Python's hash())."""
    return np.fromiter(
        (int(hashlib.sha1(str(i).encode("utf-8")).hexdigest()[:8], 16) % num_shards for i in image_ids),
        dtype=np.int64,
        count=len(image_ids),
    )


def bucket_dir(run: RunDir, unit_index: int) -> Path:
    return run.root / "manifest" / BUCKETS / f"unit-{unit_index:05d}"


def write_batch_file(path: Path, table: pa.Table, num_shards: int) -> dict[int, list[int]]:
    """One batch, sorted by shard, as record batches that each hold one shard's rows; → shard: batch indices."""
    shards = shard_numbers(table.column("image_id").to_pylist(), num_shards)
    order = np.argsort(shards, kind="stable")  # stable: a shard's rows keep their line order
    table = table.take(pa.array(order))
    shards = shards[order]
    starts = [0, *(np.flatnonzero(np.diff(shards)) + 1).tolist()]
    ends = [*starts[1:], len(shards)]
    index: dict[int, list[int]] = {}
    options = ipc.IpcWriteOptions(compression="zstd")
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with ipc.new_file(sink, CANDIDATE_SCHEMA, options=options) as writer:
            written = 0
            for start, end in zip(starts, ends, strict=True):
                if end == start:
                    continue
                for batch in table.slice(start, end - start).to_batches():
                    writer.write_batch(batch)
                    index.setdefault(int(shards[start]), []).append(written)
                    written += 1
    return index


def scatter_unit(cfg: CurateConfig, unit_index: int, unit: Unit) -> dict[str, Any]:
    """Read one unit, writing every batch to disk as it comes; returns where each shard's rows went."""
    run = RunDir(Path(cfg.run.dir))
    folder = bucket_dir(run, unit_index)
    pieces: dict[int, Pieces] = {}
    counts: Counter[str] = Counter()
    rows = 0
    for batch_index, table in enumerate(read_unit(cfg.ingest, unit)):
        if table.num_rows == 0:
            continue
        rows += table.num_rows
        counts.update(str(reason) for reason in table.column("ingest_reason").to_pylist())
        path = folder / f"batch-{batch_index:06d}.arrow"
        for shard, batches in write_batch_file(path, table, cfg.ingest.num_shards).items():
            pieces.setdefault(shard, []).append((str(path), batches))
    return {"pieces": pieces, "rows": rows, "counts": dict(counts)}


def _read_pieces(pieces: Pieces) -> Iterator[pa.RecordBatch]:
    for path, batches in pieces:
        with pa.memory_map(path) as source:
            reader = ipc.open_file(source)
            for index in batches:
                yield reader.get_batch(index)


def _first_occurrences(pieces: Pieces) -> tuple[np.ndarray, int]:
    """Whether each row of the shard, in order, holds the first occurrence of its id among the rows ingest kept;
    and the row count.

    By a stable sort of the ids: equal ids end up side by side, the earliest row first. A hash table over the
    ids (dictionary_encode) cost four times the ids' own size; the sort's indices cost 8 bytes a row.
    """
    # Only rows ingest kept compete for an id: a short or malformed line read first must not make the good line
    # of the same photo a duplicate (nulls never equal anything below).
    ids = pa.chunked_array(
        [
            pc.if_else(
                pc.equal(batch.column("ingest_status"), OK), batch.column("image_id"), pa.scalar(None, pa.string())
            )
            for batch in _read_pieces(pieces)
        ],
        pa.string(),
    )
    total = len(ids)
    first = np.ones(total, dtype=bool)
    if total < 2:
        return first, total
    order = pc.array_sort_indices(ids)
    ordered = ids.take(order)
    del ids
    same = pc.fill_null(pc.equal(ordered.slice(1), ordered.slice(0, total - 1)), False)
    first[order.to_numpy()[1:][np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)]] = False
    return first, total


def unit_error_file(run: RunDir, index: int) -> Path:
    """The traceback of an input unit whose read task failed after its retries."""
    return run.root / "stats" / NAME / f"unit-{index:05d}.error.txt"


def merge_shard(cfg: CurateConfig, shard: int, pieces: Pieces, fp: str) -> dict[str, Any]:
    started = time.perf_counter()
    run = RunDir(Path(cfg.run.dir))
    # Two passes over the shard's batches: the ids first (the only thing held whole), then the rows, streamed.
    first, total = _first_occurrences(pieces)
    statuses: list[pa.Array] = []
    reasons: list[pa.Array] = []
    pending: list[pa.Table] = []
    pending_rows = offset = 0
    with atomic_path(run.part(NAME, shard)) as tmp:
        with pq.ParquetWriter(tmp, CANDIDATE_SCHEMA, compression="zstd") as writer:
            for batch in _read_pieces(pieces):
                n = batch.num_rows
                # The first occurrence of an id is the candidate; later ones are recorded, not silently merged.
                repeated = pa.array(~first[offset : offset + n]) if n else pa.array([], pa.bool_())
                offset += n
                status = batch.column("ingest_status")
                repeat = pc.and_(repeated, pc.equal(status, OK))
                table = pa.Table.from_batches([batch])
                if pc.any(repeat).as_py():
                    table = table.set_column(
                        table.schema.get_field_index("ingest_status"),
                        "ingest_status",
                        pc.if_else(repeat, pa.scalar(REJECTED), status),
                    )
                    table = table.set_column(
                        table.schema.get_field_index("ingest_reason"),
                        "ingest_reason",
                        pc.if_else(repeat, pa.scalar("duplicate_id"), batch.column("ingest_reason")),
                    )
                statuses.append(table.column("ingest_status").combine_chunks())
                reasons.append(table.column("ingest_reason").combine_chunks())
                pending.append(table)
                pending_rows += n
                while pending_rows >= ROW_GROUP_ROWS:
                    pending, pending_rows = _write_row_group(writer, pending, ROW_GROUP_ROWS)
            if pending_rows:
                _write_row_group(writer, pending, pending_rows)
        # Still before the part is renamed into place: a part that fails these checks never lands.
        if offset != total:
            raise RuntimeError(f"ingest shard {shard}: read {offset} rows in the second pass, {total} in the first")
        frame = pd.DataFrame(
            {
                "ingest_status": pa.chunked_array(statuses, pa.string()).to_pandas(),
                "ingest_reason": pa.chunked_array(reasons, pa.string()).to_pandas(),
            }
        )
        check_reasons(NAME, frame["ingest_reason"])
    return write_marker(run, NAME, shard, fp, frame, started)


def _write_row_group(writer: pq.ParquetWriter, pending: list[pa.Table], rows: int) -> tuple[list[pa.Table], int]:
    """Write the first `rows` buffered rows as one row group (contiguous, so the bytes depend on the rows only)."""
    buffered = pa.concat_tables(pending)
    writer.write_table(buffered.slice(0, rows).combine_chunks(), row_group_size=rows)
    rest = buffered.slice(rows)
    return ([rest] if rest.num_rows else []), rest.num_rows


def ingest_fingerprint(cfg: CurateConfig, units: list[str]) -> str:
    return fingerprint(
        {
            "stage": NAME,
            "version": VERSION,
            "config": dataclasses.asdict(cfg.ingest),
            "units": [unit_fingerprint(cfg.ingest, unit) for unit in units],
        }
    )


def plan_units(ctx: StageContext, files: list[str], fp: str) -> tuple[list[Unit], dict[str, tuple[str, str]]]:
    """The read units in file, then range order; each range knows the newlines before it (counted in parallel)."""
    cfg = ctx.cfg.ingest
    layouts = {path: describe_file(cfg, path) for path in files}
    for path, (layout, how) in layouts.items():
        if layout and layout != "yfcc100m-25":
            log.warning("%s: YFCC layout %s (%s)", display(path), layout, how)
        elif layout:
            log.info("%s: YFCC layout %s (%s)", display(path), layout, how)
    ranges = {path: byte_ranges(cfg, path, RANGE_BYTES) for path in files}
    counting = {
        (path, part): (path, start, end)
        for path in files
        for part, (start, end) in enumerate(ranges[path][:-1])  # the last range's count is never needed
        if end is not None
    }
    newlines = ctx.map(count_newlines, counting, desc="ingest (count lines)", key=f"ingest-count-{fp[:12]}")
    units = []
    for file_index, path in enumerate(files):
        before = 0
        for part, (start, end) in enumerate(ranges[path]):
            units.append(Unit(path, file_index, part, start, end, before, layouts[path][0]))
            before += newlines.get((path, part), 0)
    return units, layouts


def write_sources(
    run: RunDir, files: list[str], units: list[Unit], layouts: dict[str, tuple[str, str]], results: dict[int, Any]
) -> None:
    """stats/ingest_sources.json: per input file, its layout and what became of its rows (for the summary)."""
    entries = []
    for file_index, path in enumerate(files):
        counts: Counter[str] = Counter()
        parts = [i for i, unit in enumerate(units) if unit.file_index == file_index]
        for i in parts:
            counts.update(results.get(i, {}).get("counts", {}))
        rows = sum(counts.values())
        entries.append(
            {
                "unit": display(path),
                "ranges": len(parts),
                "layout": layouts[path][0] or None,
                "layout_detection": layouts[path][1] or None,
                "rows": rows,
                "ok": counts.get(OK, 0),
                "malformed": counts.get("malformed_row", 0),
                "short": counts.get("short_row", 0),
                "internal_error": counts.get("internal_error", 0),
                "counts": dict(sorted(counts.items())),
            }
        )
    # Beside stats/ingest.json, not in stats/ingest/: that folder holds only the shards' completion markers.
    write_json(run.root / "stats" / f"{NAME}_sources.json", {"stage": NAME, "units": entries})


class IngestStage(ShardStage):
    """Reading the inputs fixes the shard layout, so it is one step over every input, not a task per shard: the
    inputs' rows are scattered to the shards as Dask tasks, then each shard is merged. The runner reuses the
    layout when every shard's marker holds the fingerprint of the inputs (their content), config and version."""

    name = NAME
    version = VERSION
    lays_out_shards = True

    def layout_shards(self) -> int:
        return self.cfg.ingest.num_shards

    def layout_fingerprint(self) -> str:
        return ingest_fingerprint(self.cfg, expand_inputs(self.cfg.ingest))

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        raise NotImplementedError("ingest reads its inputs in lay_out(); it has no rows to process")

    def lay_out(self, ctx: StageContext, fp: str) -> list[dict[str, Any]]:
        cfg, run = self.cfg, ctx.run
        num_shards = cfg.ingest.num_shards
        files = expand_inputs(cfg.ingest)
        buckets = run.root / "manifest" / BUCKETS
        shutil.rmtree(buckets, ignore_errors=True)
        units, layouts = plan_units(ctx, files, fp)
        if ctx.failed:
            return []
        # The Flickr reader retries each page itself, and what still fails (a refused key, a quota) would only
        # fail again, at the API's expense: its read task is not retried as a whole.
        retries = 0 if cfg.ingest.source == Source.flickr else None
        results = ctx.map(
            scatter_unit,
            {index: (cfg, index, unit) for index, unit in enumerate(units)},
            desc="ingest (read)",
            key=f"ingest-read-{fp[:12]}",
            retries=retries,
            error_file=partial(unit_error_file, run),
        )
        write_sources(run, files, units, layouts, results)
        if ctx.failed:
            return []
        # Unit order, then within a unit batch order: the rows of every shard in the order of the input.
        pieces: dict[int, Pieces] = {shard: [] for shard in range(num_shards)}
        for index in range(len(units)):
            for shard, found in results[index]["pieces"].items():
                pieces[int(shard)].extend(found)
        # Until every shard is merged again the layout is mixed (some shards new, some old): without shards.json
        # no later stage runs over it. It is written back once every merge succeeded.
        run.shards_file.unlink(missing_ok=True)
        markers = ctx.map(
            merge_shard,
            {shard: (cfg, shard, pieces[shard], fp) for shard in range(num_shards)},
            desc=NAME,
            key=f"ingest-{fp[:12]}",
            error_file=partial(run.error_file, NAME),
        )
        if not ctx.failed:
            write_json(run.shards_file, {"num_shards": num_shards, "ingest_fingerprint": fp})
            shutil.rmtree(buckets, ignore_errors=True)
        return [markers[shard] for shard in sorted(markers)]

"""L2-normalised embeddings in a Parquet column, two bytes a dimension: one `fixed_size_binary(2 * d)` value per
row holding the unit vector as little-endian float16, null for a row with no embedding.

Why this layout. At 512-768 dimensions a float32 column is 2-3 KiB a row (17M rows: 35-52 GB); float16 halves it.
Of the two ways Arrow can hold d float16 numbers a row, a `fixed_size_list<halffloat>[d]` column goes through
Parquet's repetition and definition levels for every element, and a `fixed_size_binary` value is one plain
FIXED_LEN_BYTE_ARRAY: for 100k x 512 rows, write 1.5 s and read 0.5 s as a list against 0.1 s and 0.04 s as binary
(no compression, no dictionary, pyarrow 26; the files are the same size). So binary it is, and `decode` is a
reinterpretation of the column's buffer, not a per-element conversion.

Writing it: pass `use_dictionary` and `write_statistics` without this column (`parquet_options`): random float16
bytes never repeat, so a dictionary is built and thrown away, and min/max statistics of 1 KiB values help no
filter. Compression gains nothing either (the bytes are noise) but costs little.

Accuracy. `encode` normalises in float32 and rounds each component to float16 (a relative error of at most
2^-11). The cosine of two decoded vectors, renormalised and computed in float32 as `curate.dedup.semantic` does,
differs from the cosine of the originals by at most 2.35e-05 over 10^6 random unit 512-d pairs at cosine 0.95,
and by at most 6.86e-05 over 10^6 random (cosine ~ 0) pairs; without the renormalisation the error at 0.95
is up to 1.0e-04, because the rounded vectors' norms are off by up to 1e-4 (measured by `measured_error`, pinned
by tests/test_semantic_dedup.py). So a pair at the usual thresholds (0.9-0.97) decides the same way in float16 as
in float32 unless its cosine is within about 3e-5 of the threshold.

Rows with no embedding. `decode` returns only the present rows' vectors plus their row numbers within the column
(nulls are never decoded into zero vectors that could look like something): the caller maps row numbers to its
own positions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DTYPE = np.dtype("<f2")


def encode(vectors: np.ndarray, present: np.ndarray | None = None) -> pa.FixedSizeBinaryArray:
    """(n, d) vectors -> n values of 2 * d bytes: each row normalised, as little-endian float16. Rows where
    `present` (n booleans; default all) is False become nulls and their values are ignored. A present row that
    is not finite or has zero length raises ValueError (it has no direction to store)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"embeddings must be (n, d) with d > 0, not {vectors.shape}")
    n, dim = vectors.shape
    keep = np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"present has shape {keep.shape}, expected ({n},)")
    unit = np.zeros((n, dim), dtype=np.float32)
    rows = vectors[keep].astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError("an embedding is not finite or has zero length")
    unit[keep] = rows / norms
    data = pa.py_buffer(unit.astype(DTYPE).tobytes())
    validity = None if keep.all() else pa.array(keep).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * dim), n, [validity, data], null_count=int(n - keep.sum()))


def decode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A column written by `encode` -> (vectors, rows): the present rows' (m, d) float16 vectors (possibly a
    read-only view of the column's memory) and their row numbers within the column (m int64, ascending)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not pa.types.is_fixed_size_binary(column.type) or column.type.byte_width % 2:
        raise TypeError(f"not an embedding column (fixed_size_binary of 2 * d bytes): {column.type}")
    dim = column.type.byte_width // 2
    vectors, rows, start = [], [], 0
    for chunk in chunks:
        chunk_vectors, chunk_rows = _decode_chunk(chunk, dim)
        vectors.append(chunk_vectors)
        rows.append(chunk_rows + start)
        start += len(chunk)
    if len(vectors) == 1:
        return vectors[0], rows[0]
    if not vectors:
        return np.zeros((0, dim), DTYPE), np.zeros(0, np.int64)
    return np.concatenate(vectors), np.concatenate(rows)


def pack(vectors: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(n, d) float16 vectors (already unit, e.g. from `decode`) as a column, bit for bit: no renormalisation, so
    that a vector copied from file to file keeps its exact value (and every pair its exact cosine)."""
    vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
    n, dim = vectors.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * dim), n, [None, pa.py_buffer(vectors.tobytes())])


def _decode_chunk(chunk: pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    # The values buffer holds a slot for every row of the (possibly sliced) chunk, nulls included.
    data = chunk.buffers()[1]
    if data is None or len(chunk) == 0:
        return np.zeros((0, dim), DTYPE), np.zeros(0, np.int64)
    flat = np.frombuffer(data, dtype=DTYPE, count=(chunk.offset + len(chunk)) * dim)
    values = flat[chunk.offset * dim :].reshape(len(chunk), dim)
    if chunk.null_count == 0:
        return values, np.arange(len(chunk), dtype=np.int64)
    rows = np.flatnonzero(pc.is_valid(chunk).to_numpy(zero_copy_only=False))
    return values[rows], rows.astype(np.int64)


def parquet_options(table: pa.Table, embedding_columns: list[str]) -> dict[str, object]:
    """Keyword arguments for `pyarrow.parquet.write_table` / `ParquetWriter`: dictionaries and statistics for
    every column but the embedding ones (see the module docstring)."""
    others = [name for name in table.column_names if name not in set(embedding_columns)]
    return {"use_dictionary": others, "write_statistics": others}


def measured_error(n: int = 1_000_000, dim: int = 512, cosine: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Max |cosine(decoded a, decoded b) - cosine(a, b)| over n random unit pairs at about `cosine` and over n
    random pairs (the numbers in the module docstring). Decoded vectors are renormalised in float32, as the
    search does; the reference is float64."""
    rng = np.random.default_rng(seed)
    worst = [0.0, 0.0]
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        a = _unit(rng.standard_normal((m, dim)))
        away = _unit(rng.standard_normal((m, dim)))
        # b = cosine * a + sqrt(1 - cosine^2) * (a unit vector orthogonal to a)
        orthogonal = _unit(away - np.einsum("ij,ij->i", away, a)[:, None] * a)
        for slot, b in enumerate((cosine * a + np.sqrt(1 - cosine**2) * orthogonal, away)):
            exact = np.einsum("ij,ij->i", a, b)
            da = _unit(_round_trip(a).astype(np.float32))
            db = _unit(_round_trip(b).astype(np.float32))
            stored = np.einsum("ij,ij->i", da, db, dtype=np.float32)
            worst[slot] = max(worst[slot], float(np.abs(stored - exact).max()))
    return worst[0], worst[1]


def _round_trip(vectors: np.ndarray) -> np.ndarray:
    return decode(encode(vectors))[0]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

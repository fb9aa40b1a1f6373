"""The release manifest's declared schema: every column, in a fixed order, with a fixed Arrow type and a meaning.

The schema depends on the recipe alone (which detectors and whether CLIP run), never on the data: a release in
which no row reached detect has the same columns, of the same types, as one in which every row did, so two
manifests of one recipe always concatenate. The release writes `conform(table, manifest_schema(cfg))` per shard,
and the per-shard stages build their parts with `frame_of` from the same declarations, so each fact (a column,
its type, what it means) is written down here once. docs/MANIFEST.md is generated from it:

    python -m curate.manifest > docs/MANIFEST.md
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from curate import pipeline
from curate.config import DETECTOR_FAMILIES, CurateConfig, DetectConfig
from curate.detect.types import COUNT_ABOVE, MAX_BOXES
from curate.fetching.imagecheck import EXTENSIONS
from curate.schema import CANDIDATE_SCHEMA, REASONS


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    # In the stage's part but not in the release manifest: bookkeeping that means nothing outside the run directory.
    internal: bool = False

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)


STRING = pa.string()
INT = pa.int64()
FLOAT = pa.float64()
BOOL = pa.bool_()
BOXES = pa.list_(pa.float64())
EMBEDDING = pa.list_(pa.float32())

# Columns of the pipeline's stages, in pipeline order: the manifest's column order.
STAGES = pipeline.names()  # the manifest holds every stage's columns, in pipeline order


def outcome(stage: str, error: str = "free text on what went wrong (null when nothing did)") -> list[Column]:
    """A stage's `<stage>_status`, `<stage>_reason` and `<stage>_error`. The runner writes `_error` for every stage
    whose shard task failed after its retries, so every per-shard stage declares it."""
    return [
        Column(f"{stage}_status", STRING, "ok, rejected or failed; null: not reached (an earlier stage stopped it)"),
        Column(f"{stage}_reason", STRING, f"why, from the closed set of {stage}'s reasons (below); null: not reached"),
        Column(f"{stage}_error", STRING, error),
    ]


_CANDIDATE_DOCS = {
    "image_id": "the row's key: safe for file names (no dot, no slash), stable across runs; names the released files",
    "source_id": "the id as the source gave it (photo id, list id or URL, a folder's relative path, a PASS hash)",
    "source": "yfcc, flickr, urls, folder or pass_release",
    "source_ref": "where the row came from: `file:line`, `page<N>:<index>`, a folder's relative path",
    "photo_id": "the Flickr/YFCC photo id, when the source has one",
    "photo_hash": "PASS's `hash`: md5 of the download URL, each byte in lower-case hex without its leading zero "
    "(see below)",
    "owner_nsid": "the owner's Flickr NSID (or a list's owner column): the owner cap groups by it",
    "owner_name": "the owner's display name, for attribution (PASS `unickname`)",
    "title": "the photo's title (a folder's file name)",
    "date_taken": "`%Y-%m-%d %H:%M:%S.%f` as PASS writes it, or null",
    "latitude": "degrees, or null (Flickr's 0/0 means no position)",
    "longitude": "degrees, or null",
    "page_url": "the photo's page, for attribution",
    "image_url": "the URL fetch downloads (file: URLs for local files)",
    "license_id": "the licence id as the source gave it (Flickr's number, a list's column)",
    "license_name": "the licence name as the source gave it",
    "license_url": "the licence URL as the source gave it",
    "ingest_status": "ok, rejected or failed",
    "ingest_reason": "why, from the closed set of ingest's reasons (below)",
    "ingest_error": "free text: the broken line, the date that could not be read (null when nothing went wrong)",
}

INGEST = [Column(f.name, f.type, _CANDIDATE_DOCS[f.name]) for f in CANDIDATE_SCHEMA]

LICENSE = [
    Column("license_code", STRING, "canonical licence code (`curate/licenses.py`), e.g. `cc-by`; null: unknown"),
    Column("license_version", STRING, "the licence version, e.g. 2.0, when known"),
    Column(
        "license_assumed",
        BOOL,
        "true when the row stated no licence and `ingest.assume_license` (or the source's documented default) "
        "was applied",
    ),
    Column(
        "license_attribution_url",
        STRING,
        "the licence URL to cite: the source's own when it names the same licence, else the canonical deed",
    ),
    *outcome("license"),
]

FETCH = [
    *outcome("fetch", "free text: the HTTP or decoding error (null when the image is fine)"),
    Column("fetch_attempts", INT, "download attempts made"),
    Column("http_status", INT, "the last HTTP status (null for file: URLs and connection errors)"),
    Column("sha256", STRING, "sha256 of the released bytes (after metadata stripping)"),
    Column("width", INT, "pixels"),
    Column("height", INT, "pixels"),
    Column("bytes", INT, "size of the released bytes"),
    Column("format", STRING, "jpeg, png or webp (as sniffed from the bytes, never from the URL)"),
    Column("mode", STRING, "Pillow mode: RGB, L, RGBA, ..."),
    Column("exif_orientation", INT, "the EXIF orientation tag of the download (1-8), null when none"),
    Column("tar_member", STRING, "the image's member in `images/part-N.tar`", internal=True),
]

CLIP = [
    Column("clip_human_prob", FLOAT, "CLIP zero-shot probability that the image shows a human"),
    Column("clip_top_class", STRING, "the best-matching human prompt class, for the audit trail"),
    Column("clip_embedding", EMBEDDING, "the L2-normalised CLIP image embedding (dedup's semantic duplicates)"),
]

DEDUP = [
    Column("phash", STRING, "64-bit DCT perceptual hash as 16 hex digits; null when the image could not be hashed"),
    Column("dedup_group", STRING, "image_id of the group's representative; null for an image with no duplicate"),
    Column("dedup_of", STRING, "image_id of the representative this row duplicates; null for a representative"),
    Column("dedup_match", STRING, "`<reference set>:sha256`, `:phash` or `:embedding`: the reference set it matches"),
    *outcome(
        "dedup",
        "free text: the exception that failed this row (`internal_error`), or its shard task's failure; null "
        "when nothing went wrong",
    ),
]

# Written by curate/stages/review.py (from the ledger review/decisions.parquet); declared here as it writes them.
REVIEW = [
    Column(
        "review_status",
        STRING,
        "ok; rejected (a reviewer removed it); review (a reviewer was unsure: not released); null: not reached",
    ),
    Column("review_reason", STRING, "not_reviewed, kept, removed or unsure; null: not reached"),
    Column("review_decision", STRING, "the latest ledger decision: keep, remove or unsure; null: none"),
    Column("review_reviewer", STRING, "who decided"),
    Column("review_timestamp", STRING, "when (UTC, ISO 8601)"),
    Column("review_note", STRING, "the reviewer's note"),
    Column("review_error", STRING, "the shard task's failure (set only for a shard whose task failed)"),
]

# Written by curate/stages/recheck.py (answers of curate.recheck); declared here as it writes them.
RECHECK = [
    Column(
        "recheck_status",
        STRING,
        "ok, or rejected (gone at its source, licence changed, opted out: removed at release); null: not reached",
    ),
    Column("recheck_reason", STRING, "why, from the closed set of recheck's reasons (below); null: not reached"),
    Column(
        "recheck_error",
        STRING,
        "free text: what the source answered (the HTTP error, the header, the licence change); a carried answer "
        "names the release it came from",
    ),
    Column("recheck_at", STRING, "when the source was asked (UTC, ISO 8601); null when it was not asked"),
    Column(
        "recheck_origin",
        STRING,
        "asked (this recheck asked the source), reused (the previous release's recent ok answer, "
        "`recheck.max_age_days`) or carried (an earlier recheck's removal, in force); null when nothing was asked",
    ),
    Column("recheck_old_license", STRING, "Flickr: the licence code as released before"),
    Column("recheck_new_license", STRING, "Flickr: the licence code the source states now (null: not listed)"),
]

# Written by curate/stages/release.py; declared here as it writes them.
RELEASE = [
    Column(
        "decision",
        STRING,
        "the human filter's verdict from the stored scores: keep, reject or review; null: not reached detect",
    ),
    Column("decision_reason", STRING, "why, from the closed set of decision reasons (below)"),
    Column("select_status", STRING, "ok, or rejected by the selection; null: the row was not releasable"),
    Column("select_reason", STRING, "ok, owner_cap, sampled_out or takedown"),
    Column("takedown_reason", STRING, "the takedown request's reason, when one names the image"),
    Column("takedown_date", STRING, "the takedown request's date"),
    Column("status", STRING, "kept, rejected, failed or review (waits for a person): the row's fate in this release"),
    Column("reason", STRING, "ok, or the first `<stage>:<reason>` that stopped the row"),
    Column("shard", INT, "the shard the row lives in (ingest hashes image_id)"),
    Column("release_status", STRING, "the run summary's status", internal=True),
    Column("release_reason", STRING, "the run summary's reason", internal=True),
]

_FIXED: dict[str, list[Column]] = {
    "ingest": INGEST,
    "license": LICENSE,
    "fetch": FETCH,
    "dedup": DEDUP,
    "review": REVIEW,
    "recheck": RECHECK,
    "release": RELEASE,
}
INTERNAL_COLUMNS = frozenset(c.name for columns in _FIXED.values() for c in columns if c.internal)


# -- detect: its columns depend on the configured detectors ---------------------------------------------------


def tiles_scored(family: str, name: str, detect: DetectConfig) -> bool:
    """Whether a detector stores a score of its own for tiles (`<family>_<name>_tiles_max`): a person detector
    whose registry entry tiles (`ModelSpec.tiles`: the YOLOX ones), when detect.person_tiles > 1. One that cannot
    tile is refused then (curate.models.registry.check_detectors); the detect stage checks each built detector
    against this."""
    from curate.models.registry import REGISTRY

    spec = REGISTRY.get(name)
    return family == "person" and spec is not None and spec.tiles and detect.seen_by(name).person_tiles > 1


def detector_columns(family: str, name: str, tiled: bool) -> list[Column]:
    """The columns of one detector, as `Scorer.score` writes them; null for an image that could not be decoded."""

    prefix = f"{family}_{name}"
    best = f"the best {family} score on the image (the full view)"
    if family == "hand":  # a hand detector's boxes are its palms', scored by hand presence on each palm's crop
        best = "the best hand presence on the image (of the crops around its palms; 0: no palm)"
    columns = [Column(f"{prefix}_max", FLOAT, best)]
    if tiled:
        tiles = "the best score on the tiles alone (a `detect.person_tiles`² grid of crops); null: the image got no "
        columns.append(
            Column(
                f"{prefix}_tiles_max",
                FLOAT,
                tiles + "tiles (`detect.person_tile_min_side`, or `detect.tile_policy=auto` looked at none)",
            )
        )
        columns.append(
            Column(
                f"{prefix}_tiles_looked",
                INT,
                "how many of the image's tiles were looked at (`detect.tile_policy=auto` looks only where they can "
                "matter)",
            )
        )
        columns.append(
            Column(
                f"{prefix}_tiles_decided_by",
                STRING,
                "`detect.tile_policy=auto`: the score column whose full-view score (at or above "
                "`detect.tile_decisive`) decided the image without its tiles; under a preset that acts on tiles and "
                "rejects it on no column, it goes to review (`tiles_skipped`). null: not skipped so",
            )
        )
    columns += [
        Column(
            f"{prefix}_count",
            INT,
            f"palms whose hand presence is above {COUNT_ABOVE}"
            if family == "hand"
            else f"{family} boxes scoring above {COUNT_ABOVE}",
        ),
        Column(
            f"{prefix}_boxes",
            BOXES,
            "flattened [x1, y1, x2, y2, score, ...] in original pixels, best first, the boxes at or above "
            f"`detect.box_floor`, at most {MAX_BOXES}",
        ),
    ]
    return columns


DETECT_ERROR = "free text: why the image could not be decoded or scored"


def detect_columns(detect: DetectConfig) -> list[Column]:
    """Every column the detect stage writes for this configuration, in order."""
    columns = [
        column
        for family in DETECTOR_FAMILIES
        for name in getattr(detect, family)
        for column in detector_columns(family, name, tiles_scored(family, name, detect))
    ]
    if detect.clip_model:
        columns += CLIP
    return columns + outcome("detect", DETECT_ERROR)


# -- the schema ----------------------------------------------------------------------------------------------


def stage_columns(cfg: CurateConfig) -> dict[str, list[Column]]:
    """Every stage's columns (its part's, internal ones included), in pipeline order."""
    return {stage: detect_columns(cfg.detect) if stage == "detect" else _FIXED[stage] for stage in STAGES}


def manifest_schema(cfg: CurateConfig) -> pa.Schema:
    """The release manifest's schema for this recipe: the same whatever the data."""
    return pa.schema([c.field for columns in stage_columns(cfg).values() for c in columns if not c.internal])


class UndeclaredColumn(ValueError):
    """A part holds a column that no declaration in curate/manifest.py names."""


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns of `schema`, in its order and types: internal columns dropped, missing
    ones added as typed nulls (e.g. a shard no row of which reached a detector). A column that is present but
    not declared raises: it would otherwise be lost from the release unnoticed."""
    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UndeclaredColumn(f"columns written by more than one stage: {repeated}")
    table = table.drop_columns([n for n in names if n in INTERNAL_COLUMNS])
    undeclared = [n for n in table.column_names if n not in schema.names]
    if undeclared:
        raise UndeclaredColumn(
            f"columns not in the declared manifest schema: {undeclared}; declare them in curate/manifest.py "
            "and regenerate docs/MANIFEST.md (python -m curate.manifest > docs/MANIFEST.md)"
        )
    return pa.Table.from_arrays([_column(table, f) for f in schema], schema=schema)


def _column(table: pa.Table, field: pa.Field) -> pa.ChunkedArray | pa.Array:
    if field.name not in table.column_names:
        return pa.nulls(len(table), field.type)
    column = table.column(field.name)
    try:
        return column.cast(field.type)  # safe: a fractional count or an overflow raises, never truncates
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise TypeError(f"column {field.name}: {column.type} does not cast to the declared {field.type}") from err


# -- the parts: pandas frames of the declared columns --------------------------------------------------------


def pandas_dtype(arrow: pa.DataType) -> str:
    """The pandas dtype that writes a column of this Arrow type: nullable ints and booleans, NaN floats (what
    curate.detect.decide reads), objects for lists (the runner writes parts through pandas)."""
    if pa.types.is_string(arrow):
        return "string"
    if pa.types.is_integer(arrow):
        return "Int64"
    if pa.types.is_boolean(arrow):
        return "boolean"
    if pa.types.is_floating(arrow):
        return "float64"
    return "object"


def dtypes(columns: Sequence[Column]) -> dict[str, str]:
    """name -> pandas dtype: a stage's `output_columns()`, so a failed shard's part has its columns too. The
    runner fills those with pd.NA, which numpy floats refuse: floats take pandas' nullable Float64 there."""
    return {c.name: "Float64" if pa.types.is_floating(c.type) else pandas_dtype(c.type) for c in columns}


def frame_of(columns: Sequence[Column], values: Mapping[str, Any] | pd.DataFrame, length: int) -> pd.DataFrame:
    """A stage's part: exactly the declared `columns`, in order and typed, from `values` (name -> column); a
    declared column without values is all null (a shard with no live row still has every column). A value for
    an undeclared column raises, so a stage cannot add a column that the manifest does not know."""
    names = [c.name for c in columns]
    undeclared = [str(name) for name in values if name not in names]
    if undeclared:
        raise UndeclaredColumn(f"values for columns not declared in curate/manifest.py: {undeclared}")
    return pd.DataFrame(
        {c.name: _typed(values[c.name] if c.name in values else None, c, length) for c in columns},
        index=range(length),
    )


def _typed(values: Any, column: Column, length: int) -> pd.Series:
    series = pd.Series([None] * length if values is None else values, dtype=object).reset_index(drop=True)
    if len(series) != length:
        raise ValueError(f"column {column.name}: {len(series)} values for {length} rows")
    dtype: Any = pandas_dtype(column.type)  # (pandas-stubs type astype by literal dtype names)
    return series if dtype == "object" else series.astype(dtype)


# -- docs/MANIFEST.md ----------------------------------------------------------------------------------------

_TITLES = {
    "ingest": "ingest: the candidate (`curate.schema.CANDIDATE_SCHEMA`)",
    "license": "license",
    "fetch": "fetch",
    "detect": "detect",
    "dedup": "dedup",
    "review": "review (from the ledger `review/decisions.parquet`)",
    "recheck": "recheck (with `release.previous`: the sources asked again)",
    "release": "release",
}


def _table(columns: Sequence[Column]) -> list[str]:
    lines = ["| column | Arrow type | meaning |", "|---|---|---|"]
    return lines + [f"| `{c.name}` | `{c.type}` | {c.doc.replace('|', '&#124;')} |" for c in columns if not c.internal]


def _reasons(stage: str) -> str:
    return ", ".join(f"`{r}`" for r in sorted(REASONS[stage]))


def _registry_names() -> dict[str, list[str]]:
    from curate.models.registry import REGISTRY

    names: dict[str, list[str]] = {family: [] for family in DETECTOR_FAMILIES}
    for spec in REGISTRY.values():
        if spec.kind in names:
            names[spec.kind].append(spec.name)
    return names


def _detect_section() -> list[str]:
    registry = _registry_names()
    tiling = [n for n in registry["person"] if tiles_scored("person", n, DetectConfig(person_tiles=2))]
    shown = [
        *detector_columns("face", "<name>", False),
        *detector_columns("person", "<name>", True),
        *detector_columns("hand", "<name>", False),
        *CLIP,
    ]
    fitting = "; ".join(f"{family} {_names(names)}" for family, names in registry.items())
    return [
        "One group of columns per configured detector: for each `<name>` in `detect.face`, `face_<name>_*`; for each "
        "in `detect.person`, `person_<name>_*`; for each in `detect.hand`, `hand_<name>_*` (a hand's score is the "
        "hand presence on its palm's crop), in that order and each list's. Registry names "
        f"(`curate/models/registry.py`) that fit: {fitting}. "
        "`person_<name>_tiles_max` exists only when `detect.person_tiles > 1` and the detector takes tiles ("
        + _names(tiling)
        + ") and `detect.person_tiles_skip` does not list it. The `clip_*` columns exist only when "
        "`detect.clip_model` is set.",
        "",
        *_table([*shown, *outcome("detect", DETECT_ERROR)]),
    ]


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def render_doc() -> str:
    """docs/MANIFEST.md: the declared schema, the status and reason codes, the release's file names."""
    out = [
        "# The release manifest",
        "",
        "<!-- Generated by `python -m curate.manifest > docs/MANIFEST.md` from curate/manifest.py: do not edit. -->",
        "",
        "`release/<version>/manifest.parquet` holds one row per candidate, kept or not. Its columns, their order and "
        "their Arrow types depend only on the recipe (the configured detectors, CLIP on or off), never on the data: "
        "two manifests of one recipe always concatenate. A column a row never reached is null.",
        "",
        "Every stage sets `<stage>_status`: `ok` (the row goes on), `rejected` (a policy said no: final) or `failed` "
        "(we could not do it); null means the row was stopped earlier. `<stage>_reason` comes from the stage's "
        "closed set below; free text goes to `<stage>_error`. Every stage may also write `internal_error` (one row "
        "raised) and `shard_failed` (its shard's task kept failing; released only with "
        "`release.allow_failed_shards=true`).",
    ]
    for stage in STAGES:
        out += ["", f"## {_TITLES[stage]}", ""]
        out += _detect_section() if stage == "detect" else _table(_FIXED[stage])
        if stage == "release":
            out += ["", f"Decision reasons: {_reasons('decision')}.", "", f"Selection reasons: {_reasons('select')}."]
            out += ["", "`reason` is `ok` or `<stage>:<reason>` with a reason of that stage (`detect:<decision "
                    "reason>` for the human filter)."]  # fmt: skip
        else:
            out += ["", f"Reasons: {_reasons(stage)}."]
    internal = ", ".join(f"`{n}`" for n in sorted(INTERNAL_COLUMNS))
    out += [
        "",
        f"Not in the manifest (bookkeeping of the run directory): {internal}.",
        "",
        "## `photo_hash` and PASS's `hash`",
        "",
        "PASS names its images by the YFCC100M photo hash: the md5 of the photo's download URL, each of its 16 bytes "
        "written in lower-case hex without its leading zero (so 16-32 characters, mostly 30-32; "
        "`curate.sources.yfcc_hash`). `pass_metadata.csv`'s `hash` is `photo_hash`.",
        "",
        "| source | `photo_hash` |",
        "|---|---|",
        "| yfcc | the file's own hash field; the rule above over the download URL for layouts without one |",
        "| pass_release | the release's own `hash`; the rule above over the URL for a row without one |",
        "| urls, flickr | the rule above over `image_url` |",
        "| folder | the rule above over the file's path relative to the folder (its raw bytes, `/`-separated): "
        "`image_url` is absolute, and the hash must not change when the folder moves |",
        "",
        "`image_id` does not follow `photo_hash`: ids are stable keys (only YFCC rows, whose id is their hash, "
        "have the two equal).",
        "",
        "## File names in the release",
        "",
        "- PASS tars `PASS.<shard>.tar`: `PASS_dataset/dummy_folder/<image_id>.<ext>`, `<ext>` the image's real "
        f"format (the `format` column: {_names(list(EXTENSIONS))}); `pass_metadata.csv`'s `file` column holds that "
        "member name.",
        f"- WebDataset `webdataset/<shard:05d>.tar`: `<image_id>.<ext>` ({_names(list(EXTENSIONS.values()))}) and "
        "`<image_id>.json` (the attribution fields) per image; `image_id` holds no dot, so it is WebDataset's key.",
    ]
    return "\n".join(out) + "\n"


def write_doc(stream: Any = None) -> None:
    (stream or sys.stdout).write(render_doc())


if __name__ == "__main__":
    write_doc()

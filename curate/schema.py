"""The contract between stages: candidate columns, statuses and the closed set of reason codes."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from enum import Enum

import pandas as pd
import pyarrow as pa


class Status(str, Enum):
    """The statuses a stage writes to `<stage>_status` (null: the row never reached the stage)."""

    ok = "ok"  # the row goes on to the next stage
    rejected = "rejected"  # a policy said no (licence, size, video, ...): final
    failed = "failed"  # something went wrong (network, corrupt bytes); may be retried if transient
    # Waits for a person, never released unseen: a reviewer was unsure (review stage), or the human filter's
    # verdict "review" at release (a reviewer's keep releases it).
    review = "review"


# The values for code to write and compare: plain str, not enum members, so pandas/pyarrow columns and the
# parquet bytes stay plain strings. OK is also the reason of a row that goes on (`<stage>_reason`,
# `select_reason`, a fetch result's reason) and the release's `reason` of a kept row: one name for both.
OK: str = Status.ok.value
REJECTED: str = Status.rejected.value
FAILED: str = Status.failed.value
REVIEW: str = Status.review.value
# The release's overall `status` of a row it releases. Its other overall statuses are REJECTED, FAILED and
# REVIEW (the first stage status that stopped the row). Not the review stage's reason "kept" (a reviewer's keep)
# nor a diff's change "kept" (released before and now): those are other vocabularies.
KEPT: str = "kept"


# Every reason a stage may write, per stage. Free text goes to `<stage>_error`, never into a reason.
REASONS: dict[str, frozenset[str]] = {
    "ingest": frozenset(
        {
            OK,
            "bad_date",  # kept; the date could not be parsed and is left empty
            "bad_encoding",  # kept; non-UTF-8 bytes were replaced
            "video",
            "short_row",
            "missing_url",
            "duplicate_id",
            "malformed_row",  # a line/record that could not be parsed into fields (kept, with its line number)
            "bad_url",  # a URL that cannot be parsed (e.g. an unclosed IPv6 bracket)
        }
    ),
    "license": frozenset({OK, "unknown_kept", "not_allowed", "unknown_license"}),
    "fetch": frozenset(
        {
            OK,
            "bad_url",
            "url_outside_root",
            "not_found",
            "http_client_error",
            "http_server_error",
            "timeout",
            "connection_error",
            "redirect_loop",
            "too_large",
            "opt_out",  # the final response's X-Robots-Tag opts out of AI training (fetch.opt_out_directives)
            "truncated",
            "not_an_image",
            "unsupported_format",
            "corrupt",
            "single_colour",
            "too_small",
            "extreme_aspect",
            "decompression_bomb",
        }
    ),
    "detect": frozenset({OK, "decode_error"}),
    "dedup": frozenset({OK, "exact_duplicate", "near_duplicate", "semantic_duplicate", "reference_duplicate"}),
    "review": frozenset({"not_reviewed", "kept", "removed", "unsure"}),
    # The sources asked again about the previous release's images (curate.recheck): ok and unreachable keep an
    # image, gone_at_source, license_changed and opt_out remove it at release. not_asked: no release.previous (or
    # recheck.enabled=false); new: not in the previous release; no_source: a folder's file, nothing to ask.
    "recheck": frozenset(
        {OK, "unreachable", "gone_at_source", "license_changed", "opt_out", "not_asked", "new", "no_source"}
    ),
    # Applied at release from the stored scores (curate.detect.decide).
    "decision": frozenset({OK, "face", "person", "hand", "clip_human", "uncertain", "tiles_skipped"}),
    # Applied at release over every shard, after the decision: cap per owner, seeded sample, takedowns.
    "select": frozenset({OK, "owner_cap", "sampled_out", "takedown"}),
}
# Every stage may fail one row (an exception while handling it: the shard goes on) or, at release with
# release.allow_failed_shards=true, every row of a shard whose task kept failing.
FAULT_REASONS = frozenset({"internal_error", "shard_failed"})
for _stage in list(REASONS):
    REASONS[_stage] = REASONS[_stage] | FAULT_REASONS
# release repeats, per row, the first reason that stopped it as "<stage>:<reason>" (or "ok").
REASONS["release"] = frozenset(
    {OK}
    | {f"{stage}:{reason}" for stage, reasons in REASONS.items() if stage != "decision" for reason in reasons}
    | {f"detect:{reason}" for reason in REASONS["decision"]}
)


def check_reasons(stage: str, reasons: pd.Series) -> None:
    """Refuse a reason outside the stage's closed set: free text belongs in `<stage>_error`."""
    unknown = set(reasons.dropna().astype(str)) - REASONS[stage]
    if unknown:
        raise ValueError(f"stage {stage} wrote reasons outside curate.schema.REASONS: {sorted(unknown)}")


# Fetch failures worth another try later (`fetch.retry_failed=true`). Not opt_out: that is the site's decision.
TRANSIENT_FETCH_REASONS = frozenset({"http_server_error", "timeout", "connection_error", "truncated"})

# What every source yields; every later stage adds `<stage>_*` columns beside these.
CANDIDATE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        # The id as the source gave it (YFCC/Flickr photo id, a URL list's id or URL, a folder's relative path,
        # a PASS hash): image_id is a key made safe for file names, this is what a person can look up.
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("source_ref", pa.string()),  # file:line, api page:index, ... — where the row came from
        ("photo_id", pa.string()),
        ("photo_hash", pa.string()),
        ("owner_nsid", pa.string()),
        ("owner_name", pa.string()),
        ("title", pa.string()),
        ("date_taken", pa.string()),  # %Y-%m-%d %H:%M:%S.%f as PASS writes it, or null
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("page_url", pa.string()),
        ("image_url", pa.string()),
        ("license_id", pa.string()),
        ("license_name", pa.string()),
        ("license_url", pa.string()),
        ("ingest_status", pa.string()),
        ("ingest_reason", pa.string()),
        ("ingest_error", pa.string()),
    ]
)
CANDIDATE_COLUMNS = CANDIDATE_SCHEMA.names

_ID_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ID_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
# An escaped id ends with "--" and a digest. A raw id that already looks like that is escaped too, so that an
# id kept as it is can never equal the escaped form of another one.
_ID_ESCAPED = re.compile(r".*--[0-9a-f]{16}")
_STEM_CHARS = 40


def is_safe_key(key: str) -> bool:
    """Whether `key` may name a WebDataset sample and a PASS member: what `safe_id` returns, and nothing else."""
    return bool(_ID_SAFE.fullmatch(key))


def safe_id(raw: str) -> str:
    """A dot-free, slash-free key (WebDataset splits keys at the first dot), distinct for distinct raw ids.

    An id made only of [A-Za-z0-9_-] stays as it is (PASS ids are YFCC hex hashes and must not change). Any
    other becomes a readable ASCII stem plus "--" and 16 hex digits of the sha1 of the raw id: `a/b`, `a.b`
    and `a b` once all became `a-b`, and every non-Latin id became dashes, so later ones were lost as
    duplicate_id. Surrogates (undecodable file-name bytes) are hashed as the original bytes.
    """
    if _ID_SAFE.fullmatch(raw) and not _ID_ESCAPED.fullmatch(raw):
        return raw
    digest = hashlib.sha1(_raw_bytes(raw)).hexdigest()[:16]
    # NFKD splits accents off their letters, so "café" reads "cafe" rather than "caf".
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", errors="ignore").decode("ascii")
    stem = _ID_UNSAFE_RUN.sub("-", ascii_text).strip("-")[:_STEM_CHARS].rstrip("-") or "id"
    return f"{stem}--{digest}"


def _raw_bytes(text: str) -> bytes:
    """The bytes a str stands for: surrogateescape gives back undecodable file-name bytes as they were."""
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside U+DC80..U+DCFF: no file-name byte, keep it distinct
        return text.encode("utf-8", errors="surrogatepass")

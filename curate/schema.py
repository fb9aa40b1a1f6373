"""The contract between stages: candidate columns, statuses and the closed set of reason codes."""

from __future__ import annotations

import re
from enum import Enum

import pandas as pd
import pyarrow as pa


class Status(str, Enum):
    ok = "ok"  # the row goes on to the next stage
    rejected = "rejected"  # a policy said no (licence, size, video, ...): final
    failed = "failed"  # something went wrong (network, corrupt bytes); may be retried if transient


# Every reason a stage may write, per stage. Free text goes to `<stage>_error`, never into a reason.
REASONS: dict[str, frozenset[str]] = {
    "ingest": frozenset(
        {
            "ok",
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
    "license": frozenset({"ok", "unknown_kept", "not_allowed", "unknown_license"}),
    "fetch": frozenset(
        {
            "ok",
            "bad_url",
            "url_outside_root",
            "not_found",
            "http_client_error",
            "http_server_error",
            "timeout",
            "connection_error",
            "redirect_loop",
            "too_large",
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
    "detect": frozenset({"ok", "decode_error"}),
    "dedup": frozenset({"ok", "exact_duplicate", "near_duplicate", "semantic_duplicate", "reference_duplicate"}),
    "review": frozenset({"not_reviewed", "kept", "removed", "unsure"}),
    # Applied at release from the stored scores (curate.detect.decide).
    "decision": frozenset({"ok", "face", "person", "clip_human", "uncertain"}),
    # Applied at release over every shard, after the decision: cap per owner, seeded sample, takedowns.
    "select": frozenset({"ok", "owner_cap", "sampled_out", "takedown"}),
}
# Every stage may fail one row (an exception while handling it: the shard goes on) or, at release with
# release.allow_failed_shards=true, every row of a shard whose task kept failing.
FAULT_REASONS = frozenset({"internal_error", "shard_failed"})
for _stage in list(REASONS):
    REASONS[_stage] = REASONS[_stage] | FAULT_REASONS
# release repeats, per row, the first reason that stopped it as "<stage>:<reason>" (or "ok").
REASONS["release"] = frozenset(
    {"ok"}
    | {f"{stage}:{reason}" for stage, reasons in REASONS.items() if stage != "decision" for reason in reasons}
    | {f"detect:{reason}" for reason in REASONS["decision"]}
)


def check_reasons(stage: str, reasons: pd.Series) -> None:
    """Refuse a reason outside the stage's closed set: free text belongs in `<stage>_error`."""
    unknown = set(reasons.dropna().astype(str)) - REASONS[stage]
    if unknown:
        raise ValueError(f"stage {stage} wrote reasons outside curate.schema.REASONS: {sorted(unknown)}")


# Fetch failures worth another try later (`fetch.retry_failed=true`).
TRANSIENT_FETCH_REASONS = frozenset({"http_server_error", "timeout", "connection_error", "truncated"})

# What every source yields; every later stage adds `<stage>_*` columns beside these.
CANDIDATE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
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

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_id(raw: str) -> str:
    """A dot-free, slash-free id (WebDataset splits keys at the first dot)."""
    return _ID_UNSAFE.sub("-", raw)

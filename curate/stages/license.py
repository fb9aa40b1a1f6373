"""license: keep only candidates under an allowed licence, keeping their attribution.

This is the one place where a licence is assumed: `ingest.assume_license` (or a source's own documented
default) applies only to rows that carry no licence information at all. A row whose licence id, name or URL
says something we cannot read is unknown, never assumed: a list's "All Rights Reserved" or "CC BY-NC" row
must not become CC BY because the list as a whole was said to be.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from curate.faults import INTERNAL_ERROR, describe
from curate.licenses import License, deed_url, has_license_info, identify
from curate.manifest import LICENSE, dtypes, frame_of
from curate.rundir import RunDir
from curate.schema import FAILED, OK, REJECTED
from curate.stages.base import ShardStage

# Sources whose rows are documented to share one licence when they carry none: PASS states that every image it
# ships is CC BY, and its pass_metadata.csv has no licence column.
SOURCE_DEFAULT_LICENSE = {"pass_release": "cc-by"}


class LicenseStage(ShardStage):
    name = "license"
    # 2: license_version, license_assumed; assumption only for rows without licence information. 3: license_error
    version = "3"

    def fingerprint_config(self) -> dict[str, Any]:
        # The assumption is made here now, not in the rows ingest writes: without it in the fingerprint a changed
        # ingest.assume_license would leave ingest's output, and so this stage, unchanged and skipped.
        return {**super().fingerprint_config(), "assume_license": self.cfg.ingest.assume_license}

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        sources = rows["source"] if "source" in rows else pd.Series(None, index=rows.index, dtype=object)
        outcomes = []
        for source, license_id, name, url in zip(
            sources, rows["license_id"], rows["license_name"], rows["license_url"], strict=True
        ):
            try:
                outcomes.append(self.judge(source, _text(license_id), _text(name), _text(url)))
            except Exception as err:  # noqa: BLE001 - one row's surprise is that row's outcome, never the shard's
                outcomes.append(Outcome(None, None, False, None, FAILED, INTERNAL_ERROR, describe(err)))
        values = {
            "license_code": [o.code for o in outcomes],
            "license_version": [o.version for o in outcomes],
            "license_assumed": [o.assumed for o in outcomes],
            "license_attribution_url": [o.url for o in outcomes],
            "license_status": [o.status for o in outcomes],
            "license_reason": [o.reason for o in outcomes],
            "license_error": [o.error for o in outcomes],
        }
        return frame_of(LICENSE, values, len(rows))

    def output_columns(self) -> dict[str, str]:
        return dtypes(LICENSE)

    def judge(self, source: object, license_id: str | None, name: str | None, url: str | None) -> Outcome:
        """One row's licence: read it, or assume the configured one where the row states none, then allow or not."""
        found: License | None
        assumed = False
        if has_license_info(license_id, name, url):
            found = identify(license_id, name, url)
        else:
            default = self.cfg.ingest.assume_license or SOURCE_DEFAULT_LICENSE.get(str(source))
            found = License(default) if default else None
            assumed = found is not None
        if found is None:
            status, reason = (OK, "unknown_kept") if self.cfg.license.keep_unknown else (REJECTED, "unknown_license")
        elif found.code in self.cfg.license.allow:
            status, reason = OK, OK
        else:
            status, reason = REJECTED, "not_allowed"
        code, version = (found.code, found.version) if found else (None, None)
        return Outcome(code, version, assumed, _attribution_url(found, url), status, reason, None)


class Outcome(NamedTuple):
    code: str | None
    version: str | None
    assumed: bool
    url: str | None
    status: str
    reason: str
    error: str | None


def _attribution_url(found: License | None, given: str | None) -> str | None:
    """The source's own licence URL when it names the same licence (it may carry a jurisdiction port), else the
    canonical deed; attribution needs a URL even when the source only named the licence."""
    if found is None:
        return given
    if given and (same := identify(url=given)) is not None and same.code == found.code:
        return given
    return deed_url(found.code, found.version) or given


def _text(value: object) -> str | None:
    """Parquet nulls arrive as None, NaN or pd.NA depending on the column's dtype."""
    return value if isinstance(value, str) and value.strip() else None

"""license: keep only candidates under an allowed licence, keeping their attribution.

This is the one place where a licence is assumed: `ingest.assume_license` (or a source's own documented
default) applies only to rows that carry no licence information at all. A row whose licence id, name or URL
says something we cannot read is unknown, never assumed: a list's "All Rights Reserved" or "CC BY-NC" row
must not become CC BY because the list as a whole was said to be.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from curate.licenses import License, deed_url, has_license_info, identify
from curate.rundir import RunDir
from curate.stages.base import ShardStage

# Sources whose rows are documented to share one licence when they carry none: PASS states that every image it
# ships is CC BY, and its pass_metadata.csv has no licence column.
SOURCE_DEFAULT_LICENSE = {"pass_release": "cc-by"}


class LicenseStage(ShardStage):
    name = "license"
    version = "2"  # license_version, license_assumed; assumption only for rows without licence information

    def fingerprint_config(self) -> dict[str, Any]:
        # The assumption is made here now, not in the rows ingest writes: without it in the fingerprint a changed
        # ingest.assume_license would leave ingest's output, and so this stage, unchanged and skipped.
        return {**super().fingerprint_config(), "assume_license": self.cfg.ingest.assume_license}

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        allow = set(self.cfg.license.allow)
        configured = self.cfg.ingest.assume_license or None
        codes, versions, assumed_flags, statuses, reasons, urls = [], [], [], [], [], []
        sources = rows["source"] if "source" in rows else pd.Series(None, index=rows.index, dtype=object)
        for source, license_id, name, url in zip(
            sources, rows["license_id"], rows["license_name"], rows["license_url"], strict=True
        ):
            license_id, name, url = _text(license_id), _text(name), _text(url)
            found: License | None
            assumed = False
            if has_license_info(license_id, name, url):
                found = identify(license_id, name, url)
            else:
                default = configured or SOURCE_DEFAULT_LICENSE.get(str(source))
                found = License(default) if default else None
                assumed = found is not None
            if found is None:
                status, reason = (
                    ("ok", "unknown_kept") if self.cfg.license.keep_unknown else ("rejected", "unknown_license")
                )
            elif found.code in allow:
                status, reason = "ok", "ok"
            else:
                status, reason = "rejected", "not_allowed"
            codes.append(found.code if found else None)
            versions.append(found.version if found else None)
            assumed_flags.append(assumed)
            statuses.append(status)
            reasons.append(reason)
            urls.append(_attribution_url(found, url))
        return pd.DataFrame(
            {
                "license_code": pd.array(codes, dtype="string"),
                "license_version": pd.array(versions, dtype="string"),
                "license_assumed": pd.array(assumed_flags, dtype="boolean"),
                "license_attribution_url": pd.array(urls, dtype="string"),
                "license_status": statuses,
                "license_reason": reasons,
            }
        )


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

"""license: keep only candidates under an allowed licence, keeping their attribution."""

from __future__ import annotations

import pandas as pd

from curate.licenses import LICENSES, normalize
from curate.rundir import RunDir
from curate.stages.base import ShardStage


class LicenseStage(ShardStage):
    name = "license"
    version = "1"

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        allow = set(self.cfg.license.allow)
        assumed = self.cfg.ingest.assume_license or None
        codes, statuses, reasons, urls = [], [], [], []
        for license_id, name, url in zip(rows["license_id"], rows["license_name"], rows["license_url"], strict=True):
            license_id, name, url = _text(license_id), _text(name), _text(url)
            code = normalize(license_id, name, url) or assumed
            if code is None:
                status, reason = (
                    ("ok", "unknown_kept") if self.cfg.license.keep_unknown else ("rejected", "unknown_license")
                )
            elif code in allow:
                status, reason = "ok", "ok"
            else:
                status, reason = "rejected", "not_allowed"
            codes.append(code)
            statuses.append(status)
            reasons.append(reason)
            # Attribution needs a licence URL even when the source only named the licence.
            urls.append(url or (LICENSES[code][1] if code else None))
        return pd.DataFrame(
            {
                "license_code": pd.array(codes, dtype="string"),
                "license_attribution_url": pd.array(urls, dtype="string"),
                "license_status": statuses,
                "license_reason": reasons,
            }
        )


def _text(value: object) -> str | None:
    """Parquet nulls arrive as None, NaN or pd.NA depending on the column's dtype."""
    return value if isinstance(value, str) and value else None

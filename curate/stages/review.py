"""review: applies the reviewers' ledger (review/decisions.parquet, latest decision per image) to the rows.

`remove` rejects a row (review:removed); `keep` overrides the human filter's reject or review verdict at
release; `unsure` holds the image back (status review, reason review:unsure): it is not released until a
reviewer decides keep. The ledger's
digest is part of every shard's fingerprint, so new decisions redo review and release and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from curate import pipeline
from curate.io.atomic import read_parquet, write_parquet
from curate.review import ledger
from curate.rundir import RunDir
from curate.schema import OK, REJECTED, REVIEW
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

UPSTREAM = pipeline.upstream("review")
REASON_OF = {"keep": "kept", "remove": "removed", "unsure": "unsure"}


def latest_path(run: RunDir) -> Path:
    return run.root / "work" / "review" / "latest.parquet"


class ReviewStage(ShardStage):
    name = "review"
    version = "2"

    def prepare(self, ctx: StageContext) -> str | None:
        root = ctx.run.root
        path = latest_path(ctx.run)
        made_from = {"version": self.version, "ledger": ledger.digest(root)}
        return ctx.step("latest", made_from, [path], lambda: write_parquet(path, ledger.latest(root).reset_index()))

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        latest = read_parquet(latest_path(run)).set_index("image_id")
        found = latest.reindex(rows["image_id"].astype("string")).reset_index(drop=True)
        decision = found["decision"].astype("string")
        reason = decision.map(REASON_OF).fillna("not_reviewed").astype("string")
        return pd.DataFrame(
            {
                # removed: final; unsure: waits for a person like the filter's "review" (never released)
                "review_status": reason.map({"removed": REJECTED, "unsure": REVIEW}).fillna(OK).astype("string"),
                "review_reason": reason,
                "review_decision": decision,
                "review_reviewer": found["reviewer"].astype("string"),
                "review_timestamp": found["timestamp"].astype("string"),
                "review_note": found["note"].astype("string"),
            }
        )

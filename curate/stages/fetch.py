"""fetch: download, validate and clean every live candidate of a shard; image bytes go into one tar per shard.

Downloads run in a thread pool (I/O bound; Pillow releases the GIL while decoding). Members are spooled and
written sorted, so the tar is byte-identical whatever order downloads finish in.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd

from curate.faults import INTERNAL_ERROR, describe
from curate.fetching.download import HostLimiter, download, make_pool
from curate.fetching.imagecheck import EXTENSIONS, check_image
from curate.io.atomic import read_parquet
from curate.io.tars import SortedTarWriter, read_members
from curate.manifest import FETCH, dtypes, frame_of
from curate.rundir import RunDir
from curate.schema import FAILED, OK, REJECTED, TRANSIENT_FETCH_REASONS
from curate.stages.base import ShardStage

COLUMNS = [column.name for column in FETCH]  # declared, with their types, in curate.manifest


class FetchStage(ShardStage):
    name = "fetch"
    version = "2"  # 2: only the primary image is released (no trailer, MPO frame, JFIF thumbnail); internal_error
    waits_on_network = True

    def output_columns(self) -> dict[str, str]:
        return dtypes(FETCH)

    def shard_outputs(self, run: RunDir, shard: int) -> list[Path]:
        return [run.images(shard)]

    def wants_rerun(self, run: RunDir, shard: int) -> bool:
        if not self.cfg.fetch.retry_failed:
            return False
        previous = read_parquet(run.part(self.name, shard))
        return bool(previous["fetch_reason"].isin(TRANSIENT_FETCH_REASONS).any())

    def _previous(self, run: RunDir, shard: int) -> dict[str, dict[Any, Any]]:
        """On a retry, the earlier outcome of every row that does not need another try, by image_id."""
        marker = run.read_marker(self.name, shard)
        if not (self.cfg.fetch.retry_failed and marker) or marker.get("failed") or not run.images(shard).exists():
            # a shard whose task failed, or whose tar is gone, has no outcome worth keeping: every row is fetched
            return {}
        earlier = pd.concat([run.load_joined(shard, ["ingest"]), read_parquet(run.part(self.name, shard))], axis=1)
        keep = earlier["fetch_status"].notna() & ~earlier["fetch_reason"].isin(TRANSIENT_FETCH_REASONS)
        return {row["image_id"]: row for row in earlier[keep][["image_id", *COLUMNS]].to_dict("records")}

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        cfg = self.cfg.fetch
        previous = self._previous(run, shard)
        reused = read_members(run.images(shard), {p["tar_member"] for p in previous.values() if p["tar_member"]})
        http = make_pool(cfg)
        limiter = HostLimiter(cfg.per_host_concurrency)

        def fetch_one(image_id: str, url: str) -> dict[str, Any]:
            try:
                return fetch_checked(image_id, url)
            except Exception as err:  # noqa: BLE001 - one row's surprise is that row's outcome, never the shard's
                return {"fetch_reason": INTERNAL_ERROR, "fetch_error": describe(err)}

        def fetch_checked(image_id: str, url: str) -> dict[str, Any]:
            got = download(url, cfg, http, limiter)
            outcome: dict[str, Any] = {
                "fetch_attempts": got.attempts,
                "http_status": got.http_status,
                "fetch_error": got.error,
                "fetch_reason": got.reason,
            }
            if got.reason != OK:
                return outcome
            checked = check_image(got.body, cfg)
            outcome.update(
                fetch_reason=checked.reason,
                fetch_error=checked.error,
                format=checked.format,
                width=checked.width,
                height=checked.height,
                mode=checked.mode,
                exif_orientation=checked.orientation,
            )
            if checked.reason == OK and checked.format:
                outcome.update(
                    sha256=checked.sha256,
                    bytes=len(checked.data),
                    tar_member=f"{image_id}.{EXTENSIONS[checked.format]}",
                    _data=checked.data,
                )
            return outcome

        outcomes: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        # A bounded window of submitted downloads keeps memory flat on shards of any size.
        window = 4 * cfg.concurrency
        pending: dict[Future[dict[str, Any]], int] = {}

        def collect(done: set[Future[dict[str, Any]]]) -> None:
            for future in done:
                outcome = future.result()
                data = outcome.pop("_data", None)
                if data is not None:
                    tar.add(outcome["tar_member"], data)
                outcomes[pending.pop(future)] = outcome

        with SortedTarWriter(run.images(shard)) as tar, ThreadPoolExecutor(cfg.concurrency) as threads:
            for position, (image_id, url) in enumerate(zip(rows["image_id"], rows["image_url"], strict=True)):
                if image_id in previous:
                    outcomes[position] = dict(previous[image_id])
                    member = outcomes[position]["tar_member"]
                    if member:
                        tar.add(member, reused[member])
                    continue
                if len(pending) >= window:
                    collect(wait(pending, return_when=FIRST_COMPLETED).done)
                pending[threads.submit(fetch_one, image_id, url)] = position
            while pending:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
        http.clear()
        frame = pd.DataFrame(outcomes, columns=COLUMNS)
        frame["fetch_status"] = frame["fetch_reason"].map(_status)
        return frame_of(FETCH, frame, len(rows))


# Policy refusals (ours, or the site's opt-out); every other non-ok reason means we could not get a valid image
# ("failed").
POLICY_REASONS = frozenset(
    {"too_large", "opt_out", "unsupported_format", "single_colour", "too_small", "extreme_aspect", "decompression_bomb"}
)


def _status(reason: str) -> str:
    if reason == OK:
        return OK
    return REJECTED if reason in POLICY_REASONS else FAILED

"""release: PASS-layout tars, WebDataset shards, the audited manifest of EVERY candidate, SHA256SUMS, data card.

release/<version>/PASS.<n>.tar            PASS_dataset/dummy_folder/<image_id>.jpeg
release/<version>/webdataset/NNNNN.tar    <image_id>.jpg + <image_id>.json
release/<version>/pass_metadata.csv       hash, unickname, latitude, longitude, datetaken, licence + URLs
release/<version>/pass_urls.txt
release/<version>/manifest.parquet        every candidate, kept or not, with each stage's status/reason
release/<version>/DATA_CARD.md            also copied to <release.data_card_dir>/<version>.md
release/<version>/SHA256SUMS              written last: the release is complete when it exists
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate.datacard import Tally, render_data_card
from curate.detect.decide import Scores, decide, thresholds
from curate.io.atomic import atomic_open, atomic_path, sha256_file
from curate.io.tars import SortedTarWriter, read_members
from curate.rundir import RunDir
from curate.stages.base import ShardStage

# Stages whose columns the release reads, in pipeline order (detect/dedup/review join here once they exist).
RELEASE_INPUTS = ["ingest", "license", "fetch", "detect"]
PASS_SUFFIX = {"jpeg": "jpeg", "png": "png", "webp": "webp"}
PASS_COLUMNS = {
    "hash": "hash",
    "owner_name": "unickname",
    "latitude": "latitude",
    "longitude": "longitude",
    "date_taken": "datetaken",
    "license_code": "license",
    "license_name": "license_name",
    "license_attribution_url": "license_url",
    "page_url": "photo_page_url",
    "image_url": "image_url",
    "owner_nsid": "owner_nsid",
    "title": "title",
    "image_id": "image_id",
    "sha256": "sha256",
    "width": "width",
    "height": "height",
}


def overall_status(rows: pd.DataFrame, stages: list[str]) -> tuple[pd.Series, pd.Series]:
    """Overall status (kept | rejected | failed | review) and the first stage:reason that stopped each row."""
    status = pd.Series("kept", index=rows.index, dtype="string")
    reason = pd.Series("ok", index=rows.index, dtype="string")
    for stage in stages:
        stopped = (status == "kept") & (rows[f"{stage}_status"] != "ok")
        status[stopped] = rows.loc[stopped, f"{stage}_status"].astype("string")
        reason[stopped] = stage + ":" + rows.loc[stopped, f"{stage}_reason"].astype("string")
    # The human filter's verdict: a rejection is final, "review" waits for a person (never released unseen).
    verdict = rows["decision"]
    for value, label in (("reject", "rejected"), ("review", "review")):
        hit = (status == "kept") & (verdict == value)
        status[hit] = label
        reason[hit] = "detect:" + rows.loc[hit, "decision_reason"].astype("string")
    return status, reason


def sample_json(row: dict[Any, Any]) -> bytes:
    keys = (
        "image_id",
        "owner_name",
        "owner_nsid",
        "title",
        "license_code",
        "license_attribution_url",
        "page_url",
        "image_url",
        "date_taken",
        "latitude",
        "longitude",
        "width",
        "height",
        "sha256",
    )
    clean = {k: (None if pd.isna(row[k]) else row[k]) for k in keys}
    return json.dumps(clean, sort_keys=True, default=str).encode("utf-8")


class ReleaseStage(ShardStage):
    name = "release"
    version = "1"
    sees_all_rows = True
    runtime_keys = frozenset({"data_card_dir"})

    def out_dir(self, run: RunDir) -> Path:
        return run.release_dir(self.cfg.release.version)

    def fingerprint_config(self) -> dict[str, Any]:
        # The decision thresholds are applied here, so a changed threshold re-releases without re-detecting.
        return {**super().fingerprint_config(), "decide": dataclasses.asdict(thresholds(self.cfg.decide))}

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        verdict, why = decide(Scores.from_manifest(rows), self.cfg.decide)
        reached = (rows["detect_status"] == "ok").to_numpy()
        rows = rows.assign(
            decision=pd.Series(verdict, index=rows.index, dtype="string").where(reached),
            decision_reason=pd.Series(why, index=rows.index, dtype="string").where(reached),
        )
        status, reason = overall_status(rows, RELEASE_INPUTS)
        kept = rows[status == "kept"]
        members = read_members(run.images(shard), set(kept["tar_member"]))
        out = self.out_dir(run)
        with (
            SortedTarWriter(out / f"PASS.{shard}.tar") as pass_tar,
            SortedTarWriter(out / "webdataset" / f"{shard:05d}.tar") as wds_tar,
        ):
            for row in kept.to_dict("records"):
                data = members[row["tar_member"]]
                image_id = row["image_id"]
                pass_tar.add(f"PASS_dataset/dummy_folder/{image_id}.{PASS_SUFFIX[row['format']]}", data)
                wds_tar.add(f"{image_id}.{row['tar_member'].rsplit('.', 1)[1]}", data)
                wds_tar.add(f"{image_id}.json", sample_json(row))
        return pd.DataFrame(
            {
                "decision": rows["decision"],
                "decision_reason": rows["decision_reason"],
                "status": status,
                "reason": reason,
                "shard": pd.array([shard] * len(rows), dtype="Int64"),
                # For the run summary and stats: what happened to every row, by its first stopping reason.
                "release_status": status.where(status != "kept", "ok"),
                "release_reason": reason,
            }
        )

    def is_finished(self, run: RunDir) -> bool:
        return (self.out_dir(run) / "SHA256SUMS").exists()

    def finish(self, run: RunDir, num_shards: int) -> None:
        """Assemble the release-wide files shard by shard, so memory stays flat at 100M candidates."""
        out = self.out_dir(run)
        (out / "SHA256SUMS").unlink(missing_ok=True)
        stages = [*RELEASE_INPUTS, self.name]
        schema = pa.unify_schemas(
            [_manifest_schema(run, shard, stages) for shard in range(num_shards)], promote_options="permissive"
        )
        tally = Tally()
        with (
            atomic_path(out / "manifest.parquet") as manifest_tmp,
            pq.ParquetWriter(manifest_tmp, schema, compression="zstd") as manifest,
            atomic_open(out / "pass_metadata.csv", "w") as metadata,
            atomic_open(out / "pass_urls.txt", "w") as urls,
        ):
            for shard in range(num_shards):
                table = _conform(_manifest_table(run, shard, stages), schema)
                manifest.write_table(table)
                frame = table.to_pandas()
                tally.add(frame)
                kept = frame[frame["status"] == "kept"].copy()
                kept["hash"] = kept["photo_hash"].fillna(kept["image_id"])
                kept = kept[list(PASS_COLUMNS)].rename(columns=PASS_COLUMNS)
                kept.to_csv(metadata, index=False, header=shard == 0, lineterminator="\n")
                urls.writelines(f"{url}\n" for url in kept["image_url"])
        card = render_data_card(self.cfg, tally, num_shards)
        with atomic_open(out / "DATA_CARD.md", "w") as handle:
            handle.write(card)
        card_dir = Path(self.cfg.release.data_card_dir or run.root / "data_cards")
        with atomic_open(card_dir / f"{self.cfg.release.version}.md", "w") as handle:
            handle.write(card)
        files = sorted(
            p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS" and not p.name.startswith(".")
        )
        with atomic_open(out / "SHA256SUMS", "w") as handle:
            handle.writelines(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in files)


# Bookkeeping columns that mean nothing outside the run directory.
_INTERNAL = ["release_status", "release_reason", "tar_member"]


def _manifest_schema(run: RunDir, shard: int, stages: list[str]) -> pa.Schema:
    fields = [f for stage in stages for f in pq.read_schema(run.part(stage, shard)).remove_metadata()]
    return pa.schema([f for f in fields if f.name not in _INTERNAL])


def _manifest_table(run: RunDir, shard: int, stages: list[str]) -> pa.Table:
    tables = [pq.read_table(run.part(stage, shard)) for stage in stages]
    names = [name for table in tables for name in table.column_names]
    joined = pa.Table.from_arrays([column for table in tables for column in table.columns], names=names)
    return joined.drop_columns(_INTERNAL)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Shards where no row reached a detector lack its columns: add them as nulls, in the schema's order."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)

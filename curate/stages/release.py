"""release: PASS-layout tars, WebDataset shards, the audited manifest of EVERY candidate, SHA256SUMS, data card.

release/<version>/PASS.<n>.tar            PASS_dataset/dummy_folder/<image_id>.<jpeg|png|webp> (its real format)
release/<version>/webdataset/NNNNN.tar    <image_id>.jpg + <image_id>.json
release/<version>/pass_metadata.csv       hash, unickname, latitude, longitude, datetaken, licence + URLs, file
release/<version>/pass_urls.txt
release/<version>/manifest.parquet        every candidate, kept or not, with each stage's status/reason (and,
                                          with release.previous, what its source said on the recheck)
release/<version>/diff.parquet            with release.previous: image_id, change (added|removed|kept), reason
release/<version>/takedowns_unmatched.csv takedown ids this run does not hold (reported, never ignored)
release/<version>/DATA_CARD.md            also copied to <release.data_card_dir>/<version>.md
release/<version>/SHA256SUMS              written last: the release is complete when it exists
"""

from __future__ import annotations

import json
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate import pipeline
from curate.datacard import Tally, markdown_table, render_data_card
from curate.detect.decide import Rule, decide, run_rule, score_columns
from curate.io.atomic import (
    atomic_open,
    atomic_path,
    read_columns,
    read_parquet,
    sha256_file,
    write_parquet,
)
from curate.io.tars import SortedTarWriter, TarMembers, WebDatasetWriter
from curate.manifest import conform, manifest_schema
from curate.rundir import RunDir
from curate.runner import StageRefused
from curate.schema import FAILED, KEPT, OK, REJECTED, REVIEW, is_safe_key
from curate.selection import diff, previous_file, previous_release, previous_takedowns, read_takedowns, select
from curate.stages.base import ShardStage
from curate.stages.recheck import RECHECK_CARD_COLUMNS, asks, recheck_card, stale_refusal

if TYPE_CHECKING:
    from curate.runner import StageContext

log = logging.getLogger("curate")

# Stages whose columns the release reads, in pipeline order.
RELEASE_INPUTS = pipeline.upstream("release")
# Those that decide what the selection draws from. The recheck's removals come after the selection, like
# takedowns: an image gone from its source pulls in no replacement.
SELECTION_INPUTS = [stage for stage in RELEASE_INPUTS if stage != "recheck"]
# A member's extension names its content: PASS's own images were all JPEGs (`.jpeg`); a PNG or WebP kept by
# fetch (its bytes are never re-encoded) is `<image_id>.png` / `.webp`. pass_metadata.csv's `file` names it.
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
    "file": "file",
}


def overall_status(rows: pd.DataFrame, stages: list[str]) -> tuple[pd.Series, pd.Series]:
    """Overall status (kept | rejected | failed | review) and the first stage:reason that stopped each row.

    In pipeline order, with the human filter's verdict right after detect's own status: a duplicate of a photo
    with a person in it is stopped as a person ("detect:face"), not as a duplicate. A rejection is final;
    "review" waits for a person (never released unseen) unless a reviewer looked and decided keep; a reviewer's
    unsure leaves the image unreleased (review:unsure)."""
    status = pd.Series(KEPT, index=rows.index, dtype="string")
    reason = pd.Series(OK, index=rows.index, dtype="string")

    def stop(hit: pd.Series, label: pd.Series | str, why: pd.Series) -> None:
        hit = hit.fillna(False).astype(bool) & (status == KEPT)
        status[hit] = label[hit] if isinstance(label, pd.Series) else label
        reason[hit] = why[hit]

    overruled = (
        rows["review_reason"].eq("kept").fillna(False).astype(bool)
        if "review_reason" in rows
        else pd.Series(False, index=rows.index)
    )
    for stage in stages:
        stop(rows[f"{stage}_status"] != OK, rows[f"{stage}_status"].astype("string"),
             stage + ":" + rows[f"{stage}_reason"].astype("string"))  # fmt: skip
        if stage == "detect":
            verdict = rows["decision"]
            for value, label in (("reject", REJECTED), ("review", REVIEW)):
                stop((verdict == value) & ~overruled, label, "detect:" + rows["decision_reason"].astype("string"))
    return status, reason


def is_published(root: Path, version: str) -> bool:
    """A release is published once its SHA256SUMS exists: from then on no command changes a byte under it."""
    return (RunDir(root).release_dir(version) / "SHA256SUMS").exists()


def next_version(root: Path, version: str) -> str:
    """The first unused version after `version`: v1 -> v2 (v3 if v2 exists), other names get "-2", "-3", ..."""
    match = re.fullmatch(r"(.*?)(\d+)", version)
    stem, number = (match.group(1), int(match.group(2))) if match else (version + "-", 1)
    while is_published(root, f"{stem}{number + 1}"):  # an unpublished (killed) attempt is that version's to finish
        number += 1
    return f"{stem}{number + 1}"


def published_refusal(root: Path, version: str) -> str:
    previous = RunDir(root).release_dir(version)
    return (
        f"release {version} is published ({previous / 'SHA256SUMS'} exists) and a published version never changes, "
        "but what it is made from has changed since (review or audit decisions, thresholds, takedowns, candidates "
        f"or release settings): make the next version, release.version={next_version(root, version)} "
        f"release.previous={previous} (the full command follows)"
    )


def pass_member(image_id: str, image_format: str) -> str:
    """The member name in the PASS-layout tars: PASS_dataset/dummy_folder/<image_id>.<jpeg|png|webp>."""
    if not is_safe_key(image_id):  # a dot or slash would name another file, or a folder, in the tar
        raise ValueError(f"image id {image_id!r} is not of [A-Za-z0-9_-] (see curate.schema.safe_id)")
    return f"PASS_dataset/dummy_folder/{image_id}.{PASS_SUFFIX[image_format]}"


def refusal(run: RunDir, failed: list[tuple[str, int]]) -> str:
    """Why release will not run while shards are failed, naming them, their tracebacks and the way out."""
    lines = [f"release refused: {len(failed)} shard(s) of earlier stages failed:"]
    for stage, shard in failed:
        error = run.error_file(stage, shard)
        shown = error.relative_to(run.root) if error.exists() else "(no traceback recorded)"
        lines.append(f"  {stage} shard {shard}: {shown}")
    lines.append(
        "  run stage=all (or each stage named) again to retry them, or set release.allow_failed_shards=true to "
        "release the other shards (the failed shards' rows are then recorded as failed with reason shard_failed)"
    )
    return "\n".join(lines)


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


def with_decision(rows: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """The rows with the human filter's decision applied to their stored scores."""
    verdict, why = decide(rows, rule)
    reached = (rows["detect_status"] == OK).to_numpy()
    return rows.assign(
        decision=pd.Series(verdict, index=rows.index, dtype="string").where(reached),
        decision_reason=pd.Series(why, index=rows.index, dtype="string").where(reached),
    )


def status_columns(run: RunDir, shard: int) -> pd.DataFrame:
    """Just the columns that decide a row's status (the selection reads every shard: no images, no embeddings)."""

    def wanted(name: str) -> bool:
        return name in ("image_id", "owner_nsid", "clip_human_prob") or name.endswith(("_status", "_reason", "_max"))

    return pd.concat([read_columns(run.part(stage, shard), wanted) for stage in RELEASE_INPUTS], axis=1)


class ReleaseStage(ShardStage):
    name = "release"
    version = "3"
    sees_all_rows = True

    def out_dir(self, run: RunDir) -> Path:
        return run.release_dir(self.cfg.release.version)

    @cached_property
    def rule(self) -> Rule:
        """The bars, read once in the client (a preset file need not exist where the shard tasks run: the rule
        travels with the stage); the same the fingerprint and the data card state."""
        return run_rule(self.cfg)

    def shard_outputs(self, run: RunDir, shard: int) -> list[Path]:
        # A shard is finished only while its tars are there: a lost one is written again, never published missing.
        out = self.out_dir(run)
        return [out / f"PASS.{shard}.tar", out / "webdataset" / f"{shard:05d}.tar"]

    def work(self, run: RunDir) -> Path:
        return run.root / "work" / "release" / self.cfg.release.version

    def fingerprint_config(self) -> dict[str, Any]:
        # The decision thresholds are applied here, so a changed threshold re-releases without re-detecting
        # (the selection's digest, from prepare, joins every shard's fingerprint through the runner). Files enter
        # by their content, never by how their path is spelt: the takedowns through the selection's stamp, the
        # previous release, the audits and the evaluation (the data card states them) here.
        # Asked once per shard: hash the files (a previous release's manifest may be gigabytes) only once.
        memo: dict[str, Any] | None = getattr(self, "_fingerprint_config", None)
        if memo is not None:
            return memo
        config = super().fingerprint_config()
        for key in ("previous", "takedowns", "evaluation"):
            config.pop(key)
        self._fingerprint_config: dict[str, Any] = {
            **config,
            "decide": self.rule.as_json(),
            "card_inputs": {role: sha256_file(path) for role, path in self.card_inputs().items() if path.exists()},
        }
        return self._fingerprint_config

    def card_inputs(self) -> dict[str, Path]:
        """Files besides the shards that the release reads, by role: the previous release (the diff), the audit
        samples the data card may report (this version's and the previous one's), the evaluation."""
        root, r = Path(self.cfg.run.dir), self.cfg.release
        found = {"audit": root / "audit" / r.version / "sample.parquet"}
        if r.previous:
            found["previous_audit"] = root / "audit" / Path(r.previous).name / "sample.parquet"
            found["previous"] = previous_file(r.previous)
        if r.evaluation:
            found["evaluation"] = Path(r.evaluation)
        return found

    def prepare(self, ctx: StageContext) -> str | None:
        """Cap per owner, seeded sample and takedowns over every shard's releasable rows: the cached step
        `<version>/selection` (work/release/<version>/selection.json)."""
        run, r = ctx.run, self.cfg.release
        num_shards = run.num_shards()
        takedowns = read_takedowns(list(r.takedowns))
        if r.previous:  # earlier takedowns stay in force; a new entry for the same id wins
            carried = previous_takedowns(r.previous)
            takedowns = pd.concat([carried, takedowns]).drop_duplicates("image_id", keep="last")
        takedowns = takedowns.sort_values("image_id").reset_index(drop=True)
        made_from = {
            "inputs": [
                [(run.read_marker(s, n) or {}).get("output_sha256") for s in RELEASE_INPUTS] for n in range(num_shards)
            ],
            "version": self.version,
            "decide": self.rule.as_json(),
            "select": [r.owner_cap, r.target_size, r.seed],
            "takedowns": takedowns.astype(object).where(takedowns.notna(), None).to_dict("records"),
        }
        work = self.work(run)
        outputs = [
            *(self.selection_path(run, shard) for shard in range(num_shards)),
            work / "takedowns.parquet",
            work / "takedowns_unmatched.parquet",
        ]
        step = f"{r.version}/selection"
        stored = sorted(
            {c for n in range(num_shards) for c in score_columns(pq.read_schema(run.part("detect", n)).names)}
        )
        if stored != sorted(self.rule.bars):
            raise StageRefused(
                f"release refused: detect stored the score columns {stored}, but the configured detectors write "
                f"{sorted(self.rule.bars)}: run stage=detect (or stage=all) so that the scores decided on are the "
                "configured models'"
            )
        if not is_published(run.root, r.version):
            # the previous release's digest, as the fingerprint took it (hashed once)
            wanted = self.fingerprint_config()["card_inputs"].get("previous") if asks(self.cfg) else None
            if stale := stale_refusal(run, wanted, r.previous):
                raise StageRefused(stale)
        if is_published(run.root, r.version):
            if not ctx.is_current(step, made_from, outputs):
                raise StageRefused(published_refusal(run.root, r.version))
        else:
            failed = run.failed_shards(RELEASE_INPUTS, num_shards)
            if failed and not r.allow_failed_shards:
                raise StageRefused(refusal(run, failed))
            for stage, shard in failed:
                log.warning("releasing without %s shard %d: its rows are failed/shard_failed", stage, shard)

        def choose() -> None:
            candidates, known = [], []
            for shard in range(num_shards):
                rows = with_decision(status_columns(run, shard), self.rule)
                status, _ = overall_status(rows, SELECTION_INPUTS)
                known.append(rows["image_id"])
                candidates.append(rows.loc[status == KEPT, ["image_id", "owner_nsid"]].assign(shard=shard))
            chosen = pd.concat(candidates, ignore_index=True)
            chosen["select_reason"] = select(chosen, r.owner_cap, r.target_size, r.seed)
            taken = chosen["image_id"].isin(takedowns["image_id"]) & (chosen["select_reason"] == OK)
            chosen.loc[taken, "select_reason"] = "takedown"
            write_parquet(work / "takedowns.parquet", takedowns)
            every_id = pd.concat(known, ignore_index=True)
            write_parquet(work / "takedowns_unmatched.parquet",
                          takedowns[~takedowns["image_id"].isin(every_id)].reset_index(drop=True))  # fmt: skip
            chosen = chosen.astype({"select_reason": "string"})
            for shard in range(num_shards):  # one file per shard: a shard task reads only its own
                mine = chosen[chosen["shard"] == shard]
                write_parquet(
                    self.selection_path(run, shard), mine[["image_id", "select_reason"]].reset_index(drop=True)
                )

        return ctx.step(step, made_from, outputs, choose)

    def refuse_work(self, run: RunDir) -> str | None:
        # Shards to redo under a published version: its config, its inputs or the code changed since.
        version = self.cfg.release.version
        return published_refusal(run.root, version) if is_published(run.root, version) else None

    def selection_path(self, run: RunDir, shard: int) -> Path:
        return self.work(run) / "selection" / f"part-{shard:05d}.parquet"

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        rows = with_decision(rows, self.rule)
        status, reason = overall_status(rows, SELECTION_INPUTS)
        by_id = read_parquet(self.selection_path(run, shard)).set_index("image_id")["select_reason"]
        select_reason = pd.Series(by_id.reindex(rows["image_id"]).to_numpy(), index=rows.index, dtype="string")
        select_reason = select_reason.where(status == KEPT)
        dropped = select_reason.notna() & (select_reason != OK)
        status[dropped] = REJECTED
        reason[dropped] = "select:" + select_reason[dropped]
        # After the selection, like a takedown: gone, relicensed or opted out (rejected), or a recheck that itself
        # failed (release.allow_failed_shards): never released unasked. unreachable is ok: the next one asks again.
        asked = rows["recheck_status"].astype("string")
        gone = asked.isin([REJECTED, FAILED]).fillna(False).astype(bool) & (status == KEPT)
        status[gone] = asked[gone]
        reason[gone] = "recheck:" + rows.loc[gone, "recheck_reason"].astype("string")
        takedowns = read_parquet(self.work(run) / "takedowns.parquet").set_index("image_id")
        noted = takedowns.reindex(rows["image_id"]).reset_index(drop=True)
        noted.index = rows.index
        kept = rows[status == KEPT]
        out = self.out_dir(run)
        with (
            # One member at a time; a shard with nothing kept (one an earlier stage failed) never opens its tar.
            TarMembers(run.images(shard)) as members,
            SortedTarWriter(out / f"PASS.{shard}.tar") as pass_tar,
            WebDatasetWriter(out / "webdataset" / f"{shard:05d}.tar") as wds_tar,
        ):
            for row in kept.to_dict("records"):
                data = members.get(row["tar_member"])
                if data is None:  # fetch wrote it: its absence means the run directory was damaged since
                    raise FileNotFoundError(f"{row['tar_member']} missing from {run.images(shard)}")
                image_id = row["image_id"]
                pass_tar.add(pass_member(image_id, row["format"]), data)
                wds_tar.add(image_id, {row["tar_member"].rsplit(".", 1)[1]: data, "json": sample_json(row)})
        return pd.DataFrame(
            {
                "decision": rows["decision"],
                "decision_reason": rows["decision_reason"],
                "select_status": select_reason.where(
                    select_reason.isna(), select_reason.eq(OK).map({True: OK, False: REJECTED})
                ).astype("string"),
                "select_reason": select_reason,
                "takedown_reason": noted["takedown_reason"].astype("string"),
                "takedown_date": noted["takedown_date"].astype("string"),
                "status": status,
                "reason": reason,
                "shard": pd.array([shard] * len(rows), dtype="Int64"),
                # For the run summary and stats: what happened to every row, by its first stopping reason.
                "release_status": status.where(status != KEPT, OK),
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
        schema = manifest_schema(self.cfg)  # fixed by the recipe, whatever the data (docs/MANIFEST.md)
        tally = Tally()
        with (
            atomic_path(out / "manifest.parquet") as manifest_tmp,
            pq.ParquetWriter(manifest_tmp, schema, compression="zstd") as manifest,
            atomic_open(out / "pass_metadata.csv", "w") as metadata,
            atomic_open(out / "pass_urls.txt", "w") as urls,
        ):
            for shard in range(num_shards):
                table = conform(_manifest_table(run, shard, stages), schema)
                manifest.write_table(table)
                # Nullable integers stay integers (a failed row's null would make every width a float: 640.0).
                frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get)
                tally.add(frame)
                kept = frame[frame["status"] == KEPT].copy()
                kept["hash"] = kept["photo_hash"]  # every source sets it (curate.sources: PASS's rule)
                kept["file"] = [pass_member(i, f) for i, f in zip(kept["image_id"], kept["format"], strict=True)]
                kept = kept[list(PASS_COLUMNS)].rename(columns=PASS_COLUMNS)
                kept.to_csv(metadata, index=False, header=shard == 0, lineterminator="\n")
                urls.writelines(f"{url}\n" for url in kept["image_url"])
        card = render_data_card(self.cfg, tally, num_shards, self._versions(run, out))
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

    def _versions(self, run: RunDir, out: Path) -> list[str]:
        """diff.parquet against release.previous, the unmatched takedowns; their sections of the data card."""
        parts: list[str] = []
        unmatched = read_parquet(self.work(run) / "takedowns_unmatched.parquet")
        applied = read_parquet(self.work(run) / "takedowns.parquet")
        if len(applied):
            parts += ["## Takedowns", f"{len(applied)} takedown(s) in force ({len(applied) - len(unmatched)} "
                      "matched an image of this run; rows carry `takedown_reason` and `takedown_date`)."]  # fmt: skip
        if len(unmatched):
            log.warning("%d takedown id(s) match no image of this run: see takedowns_unmatched.csv", len(unmatched))
            with atomic_open(out / "takedowns_unmatched.csv", "w") as handle:
                unmatched.to_csv(handle, index=False, lineterminator="\n")
            shown = ", ".join(unmatched["image_id"].head(20))
            parts += ["", f"**{len(unmatched)} takedown id(s) match no image of this run** "
                      f"(`takedowns_unmatched.csv`): {shown}"]  # fmt: skip
        else:
            (out / "takedowns_unmatched.csv").unlink(missing_ok=True)
        if self.cfg.release.previous:
            # one read of the manifest for both sections
            current = pd.read_parquet(out / "manifest.parquet", columns=["image_id", "status", *RECHECK_CARD_COLUMNS])
            parts += recheck_card(self.cfg, run, current)
            previous = previous_release(self.cfg.release.previous)
            changes = diff(previous, current[["image_id", "status", "reason"]])
            write_parquet(out / "diff.parquet", changes)
            counts = changes["change"].value_counts()
            removed = changes[changes["change"] == "removed"]["reason"].value_counts().sort_index()
            parts += [
                "",
                f"## Changes since the previous release ({Path(self.cfg.release.previous).name})",
                markdown_table(
                    ("change", "images"), [(c, int(counts.get(c, 0))) for c in ("added", "removed", "kept")]
                ),
                "",
                "Removed, by reason:",
                "",
                markdown_table(("reason", "images"), [(k, int(v)) for k, v in removed.items()] or [("-", 0)]),
                "",
                "Every change is listed in `diff.parquet` (image_id, change, reason).",
            ]
        else:
            (out / "diff.parquet").unlink(missing_ok=True)
        return parts


def _manifest_table(run: RunDir, shard: int, stages: list[str]) -> pa.Table:
    """The shard's parts side by side (conform drops the run directory's bookkeeping columns)."""
    tables = [pq.read_table(run.part(stage, shard)) for stage in stages]
    names = [name for table in tables for name in table.column_names]
    return pa.Table.from_arrays([column for table in tables for column in table.columns], names=names)

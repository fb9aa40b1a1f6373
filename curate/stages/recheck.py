"""recheck: with `release.previous` set, ask the sources again about every image that version released.

Which image is asked how (the answers and their rules: `curate.recheck`):
- Flickr and YFCC photos: per owner through the Flickr API, run-wide in `prepare`, one cached step per batch of
  `recheck.owners_per_batch` owners under one calls-per-hour limiter; a killed recheck resumes after the last
  finished batch.
- URL-list and PASS-release rows: a request to the image URL, per shard in `process`, with fetch's downloader
  (its timeouts, retries, per-host limit, user agent and opt-out rule).
- A folder's files: nothing to ask (`no_source`).

Answers of the previous release stay in force: a row it removed on a recheck is removed again, with that answer
(carried, not asked again), and its "ok" answers younger than `recheck.max_age_days` are reused. Rows the
previous release did not hold are `new` (just fetched); without a previous release every row is `not_asked`.
The release applies the removals after its selection, so they pull in no replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from curate.config import CurateConfig, output_settings
from curate.datacard import markdown_table
from curate.io.atomic import read_columns, read_json, read_parquet, sha256_file, write_json, write_parquet
from curate.manifest import RECHECK, dtypes, frame_of
from curate.recheck import Answer, utc_now
from curate.recheck.flickr import ReleasedPhoto, recheck_owners
from curate.recheck.limiter import RateLimiter
from curate.recheck.urls import recheck_urls
from curate.rundir import RunDir
from curate.schema import KEPT, OK, REJECTED
from curate.selection import previous_file, previous_release
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

ANSWER_COLUMNS = [c.name for c in RECHECK]
FLICKR_SOURCES = frozenset({"flickr", "yfcc"})
URL_SOURCES = frozenset({"urls", "pass_release"})
# How prepare plans each row of the previous release (rows not planned are "new").
ASK_URL, NO_SOURCE, DECIDED = "url", "no_source", "decided"
# Where a row's answer comes from (recheck_origin).
ASKED, REUSED, CARRIED = "asked", "reused", "carried"


def answer_row(answer: Answer) -> dict[str, Any]:
    return {
        "image_id": answer.image_id,
        "recheck_status": answer.status,
        "recheck_reason": answer.reason,
        "recheck_error": answer.error,
        "recheck_at": answer.asked_at,
        "recheck_origin": ASKED,
        "recheck_old_license": answer.old_license,
        "recheck_new_license": answer.new_license,
    }


def released_photos(rows: pd.DataFrame) -> list[ReleasedPhoto]:
    """Rows (image_id, photo_id, owner_nsid, license_code) as the Flickr recheck takes them, by image_id."""
    rows = rows.sort_values("image_id").astype(object).where(rows.notna(), None)
    return [
        ReleasedPhoto(str(image_id), str(photo_id or ""), str(owner or ""), None if code is None else str(code))
        for image_id, photo_id, owner, code in zip(
            rows["image_id"], rows["photo_id"], rows["owner_nsid"], rows["license_code"], strict=True
        )
    ]


def asks(cfg: CurateConfig) -> bool:
    """Whether this configuration asks the sources: with a previous release, unless recheck.enabled=false."""
    return cfg.recheck.enabled and bool(cfg.release.previous)


def asked_about(cfg: CurateConfig) -> str | None:
    """What the recheck answers of a run must have been made for: the previous release's digest, or None when
    this configuration asks nothing."""
    return sha256_file(previous_file(cfg.release.previous)) if asks(cfg) else None


def work_dir(run: RunDir) -> Path:
    return run.root / "work" / "recheck"


def stamp_path(run: RunDir) -> Path:
    return work_dir(run) / "stamp.json"


def stale_refusal(run: RunDir, wanted: str | None, previous: str) -> str | None:
    """Why release must not use the run's recheck answers: they were made for another previous release than the
    one whose digest is `wanted` (None: a release that asks nothing)."""
    stamp = read_json(stamp_path(run)) if stamp_path(run).exists() else None
    if stamp is not None and stamp.get("asked_about") == wanted:
        return None
    made = "no recheck" if stamp is None else f"a recheck for {stamp.get('previous') or 'no previous release'}"
    return (
        f"release refused: the run holds {made}, but this release is built "
        + (f"from release.previous={previous}" if wanted else "without asking the sources")
        + ": run stage=recheck with the same release.* settings first, or stage=all"
    )


def previous_answers(folder: str) -> pd.DataFrame:
    """image_id, kept (released by that version) and its recheck answers (absent for a release made before
    recheck existed, or elsewhere)."""
    released = previous_release(folder, tuple(ANSWER_COLUMNS))
    return released.assign(kept=released["status"] == KEPT).drop(columns="status")


class RecheckStage(ShardStage):
    name = "recheck"
    version = "1"
    waits_on_network = True

    def __init__(self, cfg: CurateConfig, now: Callable[[], str] = utc_now) -> None:
        super().__init__(cfg)
        self.now = now

    def output_columns(self) -> dict[str, str]:
        return dtypes(RECHECK)

    def fingerprint_config(self) -> dict[str, Any]:
        # The answers also depend on the licences allowed and on how fetch asks (timeouts, retries, opt-out rule).
        allow = sorted(self.cfg.license.allow)
        return {**super().fingerprint_config(), "allow": allow, "fetch": output_settings(self.cfg.fetch)}

    def plan_path(self, run: RunDir, shard: int) -> Path:
        return work_dir(run) / "plan" / f"part-{shard:05d}.parquet"

    # -- run-wide: what to ask, and the Flickr owners -------------------------------------------------------

    def prepare(self, ctx: StageContext) -> str | None:
        """Three cached steps, so that a finished recheck reads nothing again: the targets (the previous
        release's rows of each shard, with their plan), the Flickr batches, and the plan that joins their answers.
        """
        run, cfg = ctx.run, self.cfg
        digest = asked_about(cfg)
        if digest is None:
            nothing: dict[str, str | None] = {"asked_about": None, "previous": None}
            return ctx.step("plan", {"version": self.version, **nothing}, [stamp_path(run)],
                            lambda: write_json(stamp_path(run), nothing))  # fmt: skip
        num_shards = run.num_shards()
        inputs = [[(run.read_marker(s, n) or {}).get("output_sha256") for s in ("ingest", "license")]
                  for n in range(num_shards)]  # fmt: skip
        target_files = [_targets_path(run, shard) for shard in range(num_shards)]
        targets = ctx.step(
            "targets",
            {"version": self.version, "asked_about": digest, "inputs": inputs,
             "max_age_days": cfg.recheck.max_age_days},
            [*target_files, _flickr_path(run), _owners_path(run)],
            lambda: self._write_targets(run, target_files),
        )  # fmt: skip
        batches = self._ask_flickr(ctx, digest, targets)
        stamp = {"asked_about": digest, "previous": cfg.release.previous}

        def plan() -> None:
            answers = (
                pd.concat([read_parquet(p) for p in _batch_paths(run, len(batches))], ignore_index=True)
                if batches
                else pd.DataFrame(columns=["image_id", *ANSWER_COLUMNS])
            ).set_index("image_id")
            for shard, path in enumerate(target_files):
                rows = read_parquet(path)
                asked = rows["plan"] == "flickr"
                found = answers.reindex(rows.loc[asked, "image_id"])
                for column in ANSWER_COLUMNS:
                    rows.loc[asked, column] = found[column].to_numpy()
                rows.loc[asked, "plan"] = DECIDED
                write_parquet(self.plan_path(run, shard), rows)
            write_json(stamp_path(run), {**stamp, "flickr_batches": len(batches)})

        outputs = [*(self.plan_path(run, s) for s in range(num_shards)), stamp_path(run)]
        return ctx.step("plan", {"version": self.version, "stamp": stamp, "targets": targets, "batches": batches},
                        outputs, plan)  # fmt: skip

    def _write_targets(self, run: RunDir, files: list[Path]) -> None:
        """Every shard's targets, and the Flickr photos among them with their owners (sorted)."""
        previous = previous_answers(self.cfg.release.previous)
        flickr = []
        for shard, path in enumerate(files):
            rows = self._targets(run, shard, previous)
            write_parquet(path, rows)
            flickr.append(rows.loc[rows["plan"] == "flickr", ["image_id", "photo_id", "owner_nsid", "license_code"]])
        photos = pd.concat(flickr, ignore_index=True).astype("string")
        photos["owner_nsid"] = photos["owner_nsid"].fillna("")
        write_parquet(_flickr_path(run), photos.sort_values(["owner_nsid", "image_id"]).reset_index(drop=True))
        write_json(_owners_path(run), sorted(set(photos["owner_nsid"])))

    def _targets(self, run: RunDir, shard: int, previous: pd.DataFrame) -> pd.DataFrame:
        """The shard's rows of the previous release, each with its plan: carried or reused answers (decided),
        flickr (asked per owner), url (asked in process) or no_source."""
        keys = ("image_id", "source", "photo_id", "owner_nsid")
        rows = read_columns(run.part("ingest", shard), lambda c: c in keys)
        rows["license_code"] = read_columns(run.part("license", shard), lambda c: c == "license_code")["license_code"]
        # (a release made elsewhere may list one hash twice: its first row stands for it)
        known = previous.drop_duplicates("image_id").set_index("image_id").reindex(rows["image_id"]).reset_index()
        for column in ANSWER_COLUMNS:
            rows[column] = known[column].astype("string") if column in known else pd.Series(pd.NA, dtype="string")
        kept = known["kept"].eq(True).fillna(False).astype(bool)
        carried = rows["recheck_status"].eq(REJECTED).fillna(False).astype(bool)
        name = Path(self.cfg.release.previous).name
        rows.loc[carried, "recheck_error"] = f"carried from {name}: " + rows.loc[carried, "recheck_error"].fillna("")
        rows.loc[carried, "recheck_origin"] = CARRIED
        reused = kept & rows["recheck_reason"].eq(OK).fillna(False).astype(bool) & self._young(rows["recheck_at"])
        rows.loc[reused, "recheck_error"] = f"reused from {name} (recheck.max_age_days)"
        rows.loc[reused, "recheck_origin"] = REUSED
        source = rows["source"].astype("string")
        plan = pd.Series(NO_SOURCE, index=rows.index, dtype="string")
        plan[source.isin(FLICKR_SOURCES)] = "flickr"
        plan[source.isin(URL_SOURCES)] = ASK_URL
        plan[carried | reused] = DECIDED
        rows["plan"] = plan
        rows = rows[kept | carried].reset_index(drop=True)
        asked = rows["plan"] != DECIDED
        rows.loc[asked, ANSWER_COLUMNS] = pd.NA  # to be asked now
        return rows

    def _young(self, asked_at: pd.Series) -> pd.Series:
        days = self.cfg.recheck.max_age_days
        if not days:
            return pd.Series(False, index=asked_at.index)
        cutoff = datetime.strptime(self.now(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - timedelta(days=days)
        when = pd.to_datetime(asked_at, utc=True, errors="coerce", format="%Y-%m-%dT%H:%M:%SZ")
        return (when >= cutoff).fillna(False).astype(bool)

    def _ask_flickr(self, ctx: StageContext, digest: str, targets: str) -> list[str]:
        """One cached step per batch of owners (sorted): → the batches' digests. A batch that is done reads
        nothing; the photos are read once, for the first batch that asks."""
        r, run = self.cfg.recheck, ctx.run
        owners: list[str] = read_json(_owners_path(run))
        groups = [owners[i : i + r.owners_per_batch] for i in range(0, len(owners), r.owners_per_batch)]
        limiter = RateLimiter(r.flickr_calls_per_hour)

        @cache
        def photos() -> pd.DataFrame:
            return read_parquet(_flickr_path(run))

        @cache
        def client() -> Any:
            from curate.sources.flickr import make_client  # preflight made sure that its key is set

            return make_client(self.cfg.ingest.flickr)

        def ask(group: list[str], out: Path) -> None:
            listed = released_photos(photos()[photos()["owner_nsid"].isin(group)])
            before = limiter.calls
            answers = recheck_owners(listed, self.cfg.license.allow, client(), limiter, attempts=r.attempts,
                                     backoff_s=r.backoff_s, now=self.now)  # fmt: skip
            frame = pd.DataFrame([answer_row(a) for a in answers], columns=["image_id", *ANSWER_COLUMNS])
            write_parquet(out, frame.astype("string"))
            write_json(calls_path(out), {"owners": len(group), "calls": limiter.calls - before})

        digests = []
        for number, (group, out) in enumerate(zip(groups, _batch_paths(run, len(groups)), strict=True)):
            # a new previous release is asked anew, even about the same photos
            made_from = {"version": self.version, "asked_about": digest, "targets": targets, "owners": group,
                         "allow": sorted(self.cfg.license.allow), "attempts": r.attempts}  # fmt: skip
            digests.append(ctx.step(f"flickr/batch-{number:05d}", made_from, [out, calls_path(out)],
                                    partial(ask, group, out)))  # fmt: skip
        return digests

    # -- per shard: the URLs, and every row's answer ---------------------------------------------------------

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        n = len(rows)
        if not asks(self.cfg):
            return frame_of(RECHECK, {"recheck_status": [OK] * n, "recheck_reason": ["not_asked"] * n}, n)
        plan = read_parquet(self.plan_path(run, shard)).set_index("image_id")
        found = plan.reindex(rows["image_id"].astype("string")).reset_index()
        values = {c: found[c].astype("string") for c in ANSWER_COLUMNS}
        kind = found["plan"].astype("string")
        new, local = kind.isna().to_numpy(), kind.eq(NO_SOURCE).fillna(False).to_numpy(dtype=bool)
        values["recheck_status"] = values["recheck_status"].mask(new | local, OK)
        values["recheck_reason"] = values["recheck_reason"].mask(new, "new").mask(local, NO_SOURCE)
        ask = kind.eq(ASK_URL).fillna(False).to_numpy(dtype=bool)
        if ask.any():
            r = self.cfg.recheck
            items = zip(rows["image_id"].to_numpy()[ask], rows["image_url"].to_numpy()[ask], strict=True)
            answers = recheck_urls(items, self.cfg.fetch, r.placeholder_names, r.placeholder_sha256, self.now)
            got = pd.DataFrame([answer_row(a) for a in answers])
            for column in ANSWER_COLUMNS:
                values[column][ask] = got[column].astype("string").to_numpy()
        # An image planned as asked whose answer is missing (a batch file that lost it) was not answered: it stays,
        # and is asked next time; never a null, which would read as "not reached".
        lost = values["recheck_reason"].isna()
        values["recheck_status"] = values["recheck_status"].mask(lost, OK)
        values["recheck_error"] = values["recheck_error"].mask(lost, "no answer recorded")
        values["recheck_reason"] = values["recheck_reason"].mask(lost, "unreachable")
        values["recheck_origin"] = values["recheck_origin"].mask(lost, ASKED)
        return frame_of(RECHECK, values, n)


# The manifest columns the data card's section reads.
RECHECK_CARD_COLUMNS = ("reason", "recheck_reason", "recheck_origin", "recheck_at")


def recheck_card(cfg: CurateConfig, run: RunDir, manifest: pd.DataFrame) -> list[str]:
    """The data card's section on the recheck: answers counted from the release manifest's rows (with
    RECHECK_CARD_COLUMNS), when they were asked, and the Flickr API calls counted by the
    batches that asked."""
    if not cfg.release.previous:
        return []
    name = Path(cfg.release.previous).name
    head = ["", f"## Recheck at the sources (images of {name})"]
    if not cfg.recheck.enabled:
        return [*head, f"Not asked (recheck.enabled=false): it is unknown whether images of {name} have since been "
                "deleted, relicensed or opted out at their sources."]  # fmt: skip
    origin = manifest["recheck_origin"].value_counts()
    when = manifest.loc[manifest["recheck_origin"] == ASKED, "recheck_at"].dropna()
    answers = manifest["recheck_reason"].dropna()
    counts = answers[~answers.isin(["new", "not_asked"])].value_counts().sort_index()
    removed = manifest["reason"].fillna("").str.startswith("recheck:")
    stamp = read_json(stamp_path(run))
    batches = [read_json(calls_path(p)) for p in _batch_paths(run, int(stamp.get("flickr_batches", 0)))]
    lines = [
        f"{int(origin.get(ASKED, 0))} image(s) asked at their source now"
        + (f", between {when.min()} and {when.max()} (UTC)" if len(when) else ""),
        f"{int(origin.get(REUSED, 0))} recent answer(s) of {name} reused "
        f"(recheck.max_age_days={cfg.recheck.max_age_days:g})",
        f"{int(origin.get(CARRIED, 0))} removal(s) of earlier rechecks carried in force",
    ]
    if batches:
        calls, owners = sum(b["calls"] for b in batches), sum(b["owners"] for b in batches)
        lines.append(f"Flickr API calls behind these answers: {calls} for {owners} owner(s), one per page of 500 "
                     "plus retries")  # fmt: skip
    return [
        *head,
        *(f"- {line}" for line in lines),
        "",
        markdown_table(("answer", "images"), [(str(k), int(v)) for k, v in counts.items()] or [("-", 0)]),
        "",
        f"Removed from this release by the recheck: {int(removed.sum())} (reason `recheck:<answer>` in the "
        "manifest and diff.parquet). unreachable keeps an image and is asked again next time; no_source is a "
        "local file with nothing to ask.",
    ]


def _batch_paths(run: RunDir, count: int) -> list[Path]:
    # The answers of batch i; its step's marker is work/recheck/flickr/batch-<i>.json, its call count beside it.
    return [work_dir(run) / "flickr" / f"answers-{i:05d}.parquet" for i in range(count)]


def calls_path(answers: Path) -> Path:
    return answers.with_suffix(".calls.json")


def _targets_path(run: RunDir, shard: int) -> Path:
    return work_dir(run) / "targets" / f"part-{shard:05d}.parquet"


def _flickr_path(run: RunDir) -> Path:
    return work_dir(run) / "flickr" / "photos.parquet"


def _owners_path(run: RunDir) -> Path:
    return work_dir(run) / "flickr" / "owners.json"

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

import dataclasses
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq

from curate.config import FLICKR_KEY_ENV, FLICKR_SECRET_ENV, CurateConfig, runtime_keys
from curate.datacard import markdown_table
from curate.io.atomic import read_columns, read_json, read_parquet, sha256_file, write_json, write_parquet
from curate.manifest import RECHECK, dtypes, frame_of
from curate.recheck import Answer, utc_now
from curate.recheck.flickr import ReleasedPhoto, recheck_owners
from curate.recheck.limiter import RateLimiter
from curate.recheck.urls import recheck_urls
from curate.rundir import RunDir
from curate.runner import StageRefused
from curate.schema import KEPT, OK, REJECTED
from curate.stages.base import ShardStage

if TYPE_CHECKING:
    from curate.runner import StageContext

ANSWER_COLUMNS = [c.name for c in RECHECK]
FLICKR_SOURCES = frozenset({"flickr", "yfcc"})
URL_SOURCES = frozenset({"urls", "pass_release"})
# How prepare plans each row of the previous release (rows not planned are "new").
ASK_URL, NO_SOURCE, DECIDED = "url", "no_source", "decided"


def answer_row(answer: Answer) -> dict[str, Any]:
    return {
        "image_id": answer.image_id,
        "recheck_status": answer.status,
        "recheck_reason": answer.reason,
        "recheck_error": answer.error,
        "recheck_at": answer.asked_at,
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


def previous_file(folder: str) -> Path:
    """The file a previous release is known by: its manifest, or pass_metadata.csv for one made elsewhere."""
    manifest = Path(folder) / "manifest.parquet"
    return manifest if manifest.exists() else Path(folder) / "pass_metadata.csv"


def asked_about(cfg: CurateConfig) -> str | None:
    """What the recheck answers of a run must have been made for: the previous release's digest, or None when
    this configuration asks nothing (no release.previous, or recheck.enabled=false)."""
    if not (cfg.recheck.enabled and cfg.release.previous):
        return None
    return sha256_file(previous_file(cfg.release.previous))


def stamp_path(run: RunDir) -> Path:
    return run.root / "work" / "recheck" / "stamp.json"


def stale_refusal(cfg: CurateConfig, run: RunDir) -> str | None:
    """Why release must not use the run's recheck answers (they were made for another previous release)."""
    stamp = read_json(stamp_path(run)) if stamp_path(run).exists() else None
    wanted = asked_about(cfg)
    if stamp is not None and stamp.get("asked_about") == wanted:
        return None
    made = "no recheck" if stamp is None else f"a recheck for {stamp.get('previous') or 'no previous release'}"
    return (
        f"release refused: the run holds {made}, but this release is built "
        + (f"from release.previous={cfg.release.previous}" if wanted else "without asking the sources")
        + ": run stage=recheck with the same release.* settings first, or stage=all"
    )


def previous_answers(folder: str) -> pd.DataFrame:
    """image_id, kept (released by that version) and its recheck answers (null for a release made before
    recheck existed, or elsewhere)."""
    manifest = Path(folder) / "manifest.parquet"
    if not manifest.exists():
        from curate.selection import previous_release

        released = previous_release(folder)
        return released.assign(kept=released["status"] == KEPT)[["image_id", "kept"]]
    names = set(pq.read_schema(manifest).names)
    columns = ["image_id", "status", *(c for c in ANSWER_COLUMNS if c in names)]
    table = pd.read_parquet(manifest, columns=columns)
    return table.assign(kept=table["status"] == KEPT).drop(columns="status")


class RecheckStage(ShardStage):
    name = "recheck"
    version = "1"
    waits_on_network = True

    def __init__(self, cfg: CurateConfig, now: Callable[[], str] = utc_now) -> None:
        super().__init__(cfg)
        self.now = now

    @property
    def active(self) -> bool:
        return self.cfg.recheck.enabled and bool(self.cfg.release.previous)  # as asked_about, without hashing

    def output_columns(self) -> dict[str, str]:
        return dtypes(RECHECK)

    def fingerprint_config(self) -> dict[str, Any]:
        # The answers also depend on the licences allowed and on how fetch asks (timeouts, retries, opt-out rule).
        fetch = self.cfg.fetch
        asking = {k: v for k, v in dataclasses.asdict(fetch).items() if k not in runtime_keys(fetch)}
        return {**super().fingerprint_config(), "allow": sorted(self.cfg.license.allow), "fetch": asking}

    def work(self, run: RunDir) -> Path:
        return run.root / "work" / "recheck"

    def plan_path(self, run: RunDir, shard: int) -> Path:
        return self.work(run) / "plan" / f"part-{shard:05d}.parquet"

    # -- run-wide: what to ask, and the Flickr owners -------------------------------------------------------

    def prepare(self, ctx: StageContext) -> str | None:
        run, cfg = ctx.run, self.cfg
        digest = asked_about(cfg)
        if digest is None:
            nothing: dict[str, str | None] = {"asked_about": None, "previous": None}
            return ctx.step("plan", {"version": self.version, **nothing}, [stamp_path(run)],
                            lambda: write_json(stamp_path(run), nothing))  # fmt: skip
        num_shards = run.num_shards()
        previous = previous_answers(cfg.release.previous)
        targets = [self._targets(run, shard, previous) for shard in range(num_shards)]
        flickr = pd.concat([t[t["plan"] == "flickr"] for t in targets], ignore_index=True)
        batches = self._ask_flickr(ctx, flickr, digest)
        stamp = {"asked_about": digest, "previous": cfg.release.previous}
        inputs = [[(run.read_marker(s, n) or {}).get("output_sha256") for s in ("ingest", "license")]
                  for n in range(num_shards)]  # fmt: skip
        made_from = {"version": self.version, "stamp": stamp, "inputs": inputs, "batches": batches,
                     "max_age_days": cfg.recheck.max_age_days}  # fmt: skip

        def plan() -> None:
            answers = (
                pd.concat([read_parquet(p) for p in _batch_paths(run, len(batches))], ignore_index=True)
                if batches
                else pd.DataFrame(columns=["image_id", *ANSWER_COLUMNS])
            ).set_index("image_id")
            for shard, rows in enumerate(targets):
                asked = rows["plan"] == "flickr"
                found = answers.reindex(rows.loc[asked, "image_id"])
                for column in ANSWER_COLUMNS:
                    rows.loc[asked, column] = found[column].to_numpy()
                rows.loc[asked, "plan"] = DECIDED
                write_parquet(self.plan_path(run, shard), rows.reset_index(drop=True))
            write_json(stamp_path(run), {**stamp, "flickr_batches": len(batches)})

        outputs = [*(self.plan_path(run, s) for s in range(num_shards)), stamp_path(run)]
        return ctx.step("plan", made_from, outputs, plan)

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
        reused = kept & rows["recheck_reason"].eq(OK).fillna(False).astype(bool) & self._young(rows["recheck_at"])
        rows.loc[reused, "recheck_error"] = f"reused from {name} (recheck.max_age_days)"
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

    def _ask_flickr(self, ctx: StageContext, photos: pd.DataFrame, digest: str) -> list[str]:
        """One cached step per batch of owners (sorted): → the batches' digests."""
        r = self.cfg.recheck
        photos = photos.assign(owner=photos["owner_nsid"].fillna("").astype(str))
        owners = sorted(set(photos["owner"]))
        groups = [owners[i : i + r.owners_per_batch] for i in range(0, len(owners), r.owners_per_batch)]
        files = _batch_paths(ctx.run, len(groups))
        steps = []
        for number, group in enumerate(groups):
            listed = released_photos(photos[photos["owner"].isin(group)])
            made_from = {
                "version": self.version,
                # a new previous release is asked anew, even about the same photos
                "asked_about": digest,
                "allow": sorted(self.cfg.license.allow),
                "attempts": r.attempts,
                "photos": [[p.image_id, p.photo_id, p.owner_nsid, p.license_code] for p in listed],
            }
            steps.append((f"flickr/batch-{number:05d}", made_from, files[number], listed))
        pending = [s for s in steps if not ctx.is_current(s[0], s[1], [s[2], calls_path(s[2])])]
        if pending:
            self._check_keys(sum(len(s[3]) for s in pending))
        limiter = RateLimiter(r.flickr_calls_per_hour)
        client: list[Any] = []

        def ask(listed: list[ReleasedPhoto], out: Path) -> None:
            if not client:
                from curate.sources.flickr import make_client

                client.append(make_client(self.cfg.ingest.flickr))
            before = limiter.calls
            answers = recheck_owners(listed, self.cfg.license.allow, client[0], limiter, attempts=r.attempts,
                                     backoff_s=r.backoff_s, now=self.now)  # fmt: skip
            frame = pd.DataFrame([answer_row(a) for a in answers], columns=["image_id", *ANSWER_COLUMNS])
            write_parquet(out, frame.astype("string"))
            owners_asked = len({p.owner_nsid for p in listed})
            write_json(calls_path(out), {"owners": owners_asked, "calls": limiter.calls - before})

        digests = []
        for name, made_from, out, listed in steps:
            digests.append(ctx.step(name, made_from, [out, calls_path(out)], partial(ask, listed, out)))
        return digests

    def _check_keys(self, photos: int) -> None:
        missing = [name for name in (FLICKR_KEY_ENV, FLICKR_SECRET_ENV) if not os.environ.get(name)]
        if missing:
            raise StageRefused(
                f"recheck refused: {photos} image(s) of the previous release are Flickr/YFCC photos, asked through "
                f"the Flickr API, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: export "
                "the API key and secret (as for ingest.source=flickr), or set recheck.enabled=false to release "
                "without asking the sources (the data card then says they were not asked)"
            )

    # -- per shard: the URLs, and every row's answer ---------------------------------------------------------

    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame:
        n = len(rows)
        if not self.active:
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
                values[column] = values[column].copy()
                values[column][ask] = got[column].astype("string").to_numpy()
        # An image planned as asked whose answer is missing (a batch file that lost it) was not answered: it stays,
        # and is asked next time; never a null, which would read as "not reached".
        lost = values["recheck_reason"].isna()
        values["recheck_status"] = values["recheck_status"].mask(lost, OK)
        values["recheck_error"] = values["recheck_error"].mask(lost, "no answer recorded")
        values["recheck_reason"] = values["recheck_reason"].mask(lost, "unreachable")
        return frame_of(RECHECK, values, n)


def recheck_card(cfg: CurateConfig, run: RunDir, manifest: Path) -> list[str]:
    """The data card's section on the recheck: answers counted from the release manifest, when they were asked,
    and the Flickr API calls counted by the batches that asked."""
    if not cfg.release.previous:
        return []
    name = Path(cfg.release.previous).name
    head = ["", f"## Recheck at the sources (images of {name})"]
    if not cfg.recheck.enabled:
        return [*head, f"Not asked (recheck.enabled=false): it is unknown whether images of {name} have since been "
                "deleted, relicensed or opted out at their sources."]  # fmt: skip
    rows = pd.read_parquet(manifest, columns=["recheck_reason", "recheck_error", "recheck_at", "reason"])
    answered = rows[rows["recheck_reason"].notna() & ~rows["recheck_reason"].isin(["new", "not_asked"])]
    note = answered["recheck_error"].fillna("")
    carried, reused = note.str.startswith(f"carried from {name}"), note.str.startswith(f"reused from {name}")
    asked = answered[~carried & ~reused & (answered["recheck_reason"] != "no_source")]
    when = asked["recheck_at"].dropna()
    counts = answered["recheck_reason"].value_counts().sort_index()
    removed = rows["reason"].fillna("").str.startswith("recheck:")
    stamp = read_json(stamp_path(run))
    batches = [read_json(calls_path(p)) for p in _batch_paths(run, int(stamp.get("flickr_batches", 0)))]
    lines = [
        f"{len(asked)} image(s) asked at their source now"
        + (f", between {when.min()} and {when.max()} (UTC)" if len(when) else ""),
        f"{int(reused.sum())} recent answer(s) of {name} reused (recheck.max_age_days={cfg.recheck.max_age_days:g})",
        f"{int(carried.sum())} removal(s) of earlier rechecks carried in force",
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
    return [run.root / "work" / "recheck" / "flickr" / f"answers-{i:05d}.parquet" for i in range(count)]


def calls_path(answers: Path) -> Path:
    return answers.with_suffix(".calls.json")

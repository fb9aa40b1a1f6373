"""Release-wide selection, applied after the human filter: a cap per owner, a seeded sample to a target size,
then takedowns. A takedown comes last on purpose: it removes its image and pulls in no replacement, so vN+1
differs from vN by exactly the images taken down (and whatever else changed upstream)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from curate.schema import KEPT, OK, safe_id

TAKEDOWN_COLUMNS = ["image_id", "takedown_reason", "takedown_date"]


def seeded_key(image_ids: pd.Series, seed: int) -> pd.Series:
    """A stable pseudo-random order: the same seed and ids give the same order on every machine."""
    return image_ids.map(lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def select(candidates: pd.DataFrame, owner_cap: int, target_size: int, seed: int) -> pd.Series:
    """'ok' | 'owner_cap' | 'sampled_out' per candidate (columns image_id, owner_nsid), same index."""
    ranked = candidates.assign(_key=seeded_key(candidates["image_id"], seed)).sort_values(["_key", "image_id"])
    reason = pd.Series(OK, index=ranked.index, dtype=object)
    if owner_cap:
        owned = ranked["owner_nsid"].notna()
        rank = ranked[owned].groupby("owner_nsid", sort=False).cumcount()
        reason[rank.index[rank.to_numpy() >= owner_cap]] = "owner_cap"
    if target_size:
        remaining = reason.index[reason.to_numpy() == OK]
        reason[remaining[target_size:]] = "sampled_out"
    return reason.reindex(candidates.index)


def read_takedowns(paths: list[str]) -> pd.DataFrame:
    """image_id, takedown_reason, takedown_date from CSV files with columns image_id, reason, date (the last
    entry for an id wins)."""
    frames = []
    for path in paths:
        table = pd.read_csv(Path(path), dtype=str, keep_default_na=False)
        missing = {"image_id", "reason"} - set(table.columns)
        if missing:
            raise ValueError(f"takedown list {path} lacks columns {sorted(missing)} (need image_id, reason, date)")
        frames.append(
            pd.DataFrame(
                {
                    "image_id": table["image_id"].str.strip(),
                    "takedown_reason": table["reason"].str.strip(),
                    "takedown_date": table["date"].str.strip() if "date" in table else "",
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=TAKEDOWN_COLUMNS, dtype="string")
    merged = pd.concat(frames, ignore_index=True)
    merged = merged[merged["image_id"] != ""]
    return merged.drop_duplicates("image_id", keep="last").reset_index(drop=True).astype("string")


def previous_takedowns(previous_release: str) -> pd.DataFrame:
    """The takedowns of a previous release: those recorded in its manifest and those that matched none of its
    images (takedowns_unmatched.csv): every one stays in force, also for an image a later run finds."""
    import pyarrow.parquet as pq

    found = [pd.DataFrame(columns=TAKEDOWN_COLUMNS, dtype="string")]
    manifest = Path(previous_release) / "manifest.parquet"
    # a release made elsewhere, or before takedowns existed, has none on record
    if manifest.exists() and set(TAKEDOWN_COLUMNS) <= set(pq.read_schema(manifest).names):
        table = pd.read_parquet(manifest, columns=TAKEDOWN_COLUMNS)
        found.append(table[table["takedown_reason"].notna()])
    unmatched = Path(previous_release) / "takedowns_unmatched.csv"
    if unmatched.exists():
        found.append(pd.read_csv(unmatched, dtype=str, keep_default_na=False).reindex(columns=TAKEDOWN_COLUMNS))
    merged = pd.concat(found, ignore_index=True).astype("string")
    return merged.drop_duplicates("image_id", keep="last").reset_index(drop=True)


def previous_file(folder: str) -> Path:
    """The file a previous release is known by: its manifest, or pass_metadata.csv for one made elsewhere."""
    manifest = Path(folder) / "manifest.parquet"
    return manifest if manifest.exists() else Path(folder) / "pass_metadata.csv"


def previous_release(folder: str, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """image_id and status of every row of a previous release: its manifest.parquet, or for a release made
    elsewhere (PASS itself) its pass_metadata.csv, whose rows were all released, keyed as the pass_release source
    keys them. With those of the `extra` manifest columns that the release has (a release made before a column
    existed, or elsewhere, has not)."""
    manifest = Path(folder) / "manifest.parquet"
    if manifest.exists():
        import pyarrow.parquet as pq

        present = set(pq.read_schema(manifest).names)
        return pd.read_parquet(manifest, columns=["image_id", "status", *(c for c in extra if c in present)])
    table = pd.read_csv(Path(folder) / "pass_metadata.csv", dtype=str, keep_default_na=False)
    ids = [safe_id(h.strip()) if h.strip() else f"pass-row-{n + 1}" for n, h in enumerate(table["hash"])]
    return pd.DataFrame({"image_id": ids, "status": KEPT})


def diff(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """image_id, change (added | removed | kept), reason: over the images released in either version.
    `previous` has image_id and status; `current` has image_id, status and reason. A removed image's reason is
    why this version did not release it ("absent" when this run does not have it at all)."""
    before = set(previous.loc[previous["status"] == KEPT, "image_id"])
    now = current.set_index("image_id")
    after = set(now.index[now["status"] == KEPT])
    rows = [(i, "added", OK) for i in after - before]
    rows += [(i, "kept", OK) for i in after & before]
    rows += [(i, "removed", str(now.at[i, "reason"]) if i in now.index else "absent") for i in before - after]
    out = pd.DataFrame(rows, columns=["image_id", "change", "reason"]).sort_values("image_id", kind="stable")
    return out.reset_index(drop=True).astype("string")

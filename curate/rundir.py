"""The run directory: the only channel between stages.

<run.dir>/shards.json                      shard count fixed at ingest
<run.dir>/manifest/<stage>/part-NNNNN.parquet
<run.dir>/stats/<stage>/part-NNNNN.json      written LAST: the shard's completion marker
<run.dir>/images/part-NNNNN.tar              image bytes, written once by fetch
<run.dir>/release/<version>/                 what users download
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curate.io.atomic import read_parquet


@dataclass(frozen=True)
class RunDir:
    root: Path

    def part(self, stage: str, shard: int) -> Path:
        return self.root / "manifest" / stage / f"part-{shard:05d}.parquet"

    def marker(self, stage: str, shard: int) -> Path:
        return self.root / "stats" / stage / f"part-{shard:05d}.json"

    def error_file(self, stage: str, shard: int) -> Path:
        """The full traceback of a shard task that failed after its retries (removed when the shard succeeds)."""
        return self.root / "stats" / stage / f"part-{shard:05d}.error.txt"

    def failed_shards(self, stages: list[str], num_shards: int) -> list[tuple[str, int]]:
        """(stage, shard) of every shard whose marker records a task failure (its rows are `shard_failed`)."""
        return [
            (stage, shard)
            for stage in stages
            for shard in range(num_shards)
            if (self.read_marker(stage, shard) or {}).get("failed")
        ]

    def images(self, shard: int) -> Path:
        return self.root / "images" / f"part-{shard:05d}.tar"

    def release_dir(self, version: str) -> Path:
        return self.root / "release" / version

    @property
    def detect_weights(self) -> Path:
        """sha256 of each weight file detect scored with, as verified on disk when it last had work."""
        return self.root / "stats" / "detect_weights.json"

    @property
    def shards_file(self) -> Path:
        return self.root / "shards.json"

    def num_shards(self) -> int:
        if not self.shards_file.exists():
            raise FileNotFoundError(f"{self.root} has no ingested candidates yet: run stage=ingest first")
        return int(json.loads(self.shards_file.read_text())["num_shards"])

    def read_marker(self, stage: str, shard: int) -> dict[str, Any] | None:
        path = self.marker(stage, shard)
        if not path.exists():
            return None
        try:
            marker: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes, but never trust a marker we cannot read
        return marker if self.part(stage, shard).exists() else None

    def load_joined(self, shard: int, stages: list[str]) -> pd.DataFrame:
        """The shard's candidate rows with the columns every listed stage added, side by side."""
        frames = [read_parquet(self.part(stage, shard)) for stage in stages]
        rows = len(frames[0])
        for stage, frame in zip(stages, frames, strict=True):
            if len(frame) != rows:
                raise RuntimeError(f"{self.part(stage, shard)} has {len(frame)} rows, ingest has {rows}")
        return pd.concat(frames, axis=1)

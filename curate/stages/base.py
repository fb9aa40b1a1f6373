"""The one small interface a per-shard stage implements; the runner does the chores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from curate.config import CurateConfig, output_settings
from curate.rundir import RunDir

if TYPE_CHECKING:
    from curate.runner import StageContext


class ShardStage(ABC):
    """A stage gets a shard's rows (with every earlier stage's columns) and returns the columns it adds.

    The returned frame has the same length and order as `rows`, and must hold `<name>_status` and
    `<name>_reason` (see `curate.schema.REASONS`). Rows an earlier stage stopped are not passed in: the
    runner fills their columns with nulls ("not reached").
    """

    name: ClassVar[str]
    # Bump when the output for the same input and config changes: finished shards are then redone.
    version: ClassVar[str]
    # Further keys that change speed but not output, besides those marked RUNTIME on their field; they stay out of
    # the fingerprint.
    runtime_keys: ClassVar[frozenset[str]] = frozenset()
    # Whether rows stopped by an earlier stage are passed in too (release needs every row).
    sees_all_rows: ClassVar[bool] = False
    # Whether shards need a GPU worker when the run has GPU workers (dask.gpus > 0).
    uses_gpu: ClassVar[bool] = False
    # Whether a shard mostly waits on the network (fetch): on curate's own clusters it then takes a worker's
    # NETWORK_SLOT, beside its compute task, instead of the COMPUTE_SLOT (curate.runner.Runner.placement).
    waits_on_network: ClassVar[bool] = False
    # Whether the stage lays out the shards (ingest): then it is one step over all its inputs (`lay_out`), not a
    # task per existing shard (`process`).
    lays_out_shards: ClassVar[bool] = False

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg

    def stage_config(self) -> Any:
        return getattr(self.cfg, self.name)

    def fingerprint_config(self) -> dict[str, Any]:
        config = self.stage_config()
        return output_settings(config, self.runtime_keys)  # speed-only keys are marked on their field (RUNTIME)

    @abstractmethod
    def process(self, rows: pd.DataFrame, shard: int, run: RunDir) -> pd.DataFrame: ...

    def output_columns(self) -> dict[str, str]:
        """Columns (name -> pandas dtype) that later stages read from this stage's part, besides status/reason:
        a failed shard's part carries them as nulls, so the stages after it run over it like over any other."""
        return {}

    def shard_outputs(self, run: RunDir, shard: int) -> list[Path]:
        """Files besides its part that a shard writes (fetch's tar): a shard whose file is gone runs again."""
        return []

    def prepare(self, ctx: StageContext) -> str | None:
        """Runs once in the client before the shards: a step that needs every shard (global grouping), as cached
        steps of `ctx` (`ctx.step`, `ctx.shard_steps`). Returns a digest of what it produced; the runner puts it
        into every shard's fingerprint, so that shards are redone exactly when it changes. It may raise
        `curate.runner.StageRefused` before writing anything."""
        return None

    # -- a stage that lays out the shards (lays_out_shards) ----------------------------------------------------

    def layout_shards(self) -> int:
        """How many shards the stage lays out."""
        raise NotImplementedError(f"stage {self.name} does not lay out shards")

    def layout_fingerprint(self) -> str:
        """The fingerprint every shard's marker holds when the layout is current (inputs, config, version)."""
        raise NotImplementedError(f"stage {self.name} does not lay out shards")

    def lay_out(self, ctx: StageContext, fp: str) -> list[dict[str, Any]]:
        """Write every shard's part and marker (with fingerprint `fp`) through `ctx.map`; → the markers written."""
        raise NotImplementedError(f"stage {self.name} does not lay out shards")

    def refuse_work(self, run: RunDir) -> str | None:
        """Why this stage must not redo the shards whose fingerprint changed (None: it may). Release refuses
        to rewrite a published version."""
        return None

    def before_work(self) -> None:
        """Runs in the client when at least one shard will run, before any is submitted: checks that only work
        needs (detect's weight files), so that a run with nothing to do needs none of it."""
        return None

    def wants_rerun(self, run: RunDir, shard: int) -> bool:
        """Whether a finished shard must run again although its fingerprint matches (e.g. retries)."""
        return False

    def finish(self, run: RunDir, num_shards: int) -> None:
        """Runs once in the client after every shard is done (release assembles its files here)."""
        return None

    def is_finished(self, run: RunDir) -> bool:
        """Whether `finish` has completed for the current shards (checked when no shard had work)."""
        return True

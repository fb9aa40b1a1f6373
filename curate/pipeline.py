"""The pipeline, declared once: its stages in order. Everything that depends on the order is derived from here:
which stages `stage=all` runs, the stages whose columns each one reads (always every earlier one), the inputs of
release, and the steps of the funnel that the data card, the report and the notebooks count.

A stage is named here by the import path of its class, so that this module imports no stage: the data card and
the funnel read it, and the stages import them. Adding a stage is one module and one line below
(ARCHITECTURE.md, "Adding a stage").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curate.stages.base import ShardStage


@dataclass(frozen=True)
class StageEntry:
    name: str
    # "module:Class" of the stage (a curate.stages.base.ShardStage)
    cls: str
    # (step key, label) of the funnel steps this stage stops rows at, in the order release applies them. A
    # step key is the `<key>:` that prefixes a stopped row's `reason` (detect's scored rows stop at "filter").
    funnel: tuple[tuple[str, str], ...]


PIPELINE: tuple[StageEntry, ...] = (
    StageEntry("ingest", "curate.stages.ingest:IngestStage", (("ingest", "valid records"),)),
    StageEntry("license", "curate.stages.license:LicenseStage", (("license", "licence allowed"),)),
    StageEntry("fetch", "curate.stages.fetch:FetchStage", (("fetch", "downloaded and valid"),)),
    StageEntry(
        "detect",
        "curate.stages.detect:DetectStage",
        (("detect", "scored by the human filter"), ("filter", "passed the human filter (or a reviewer kept it)")),
    ),
    StageEntry("dedup", "curate.stages.dedup:DedupStage", (("dedup", "not a duplicate"),)),
    StageEntry("review", "curate.stages.review:ReviewStage", (("review", "not removed or left unsure by a reviewer"),)),
    # Its removals are applied by release after the selection (like takedowns: no replacement is drawn), so its
    # funnel step stands among release's.
    StageEntry("recheck", "curate.stages.recheck:RecheckStage", ()),
    StageEntry(
        "release",
        "curate.stages.release:ReleaseStage",
        (
            ("select", "within the owner cap and the sample, not taken down"),
            ("recheck", "released: still at its source, licence allowed, not opted out"),
        ),
    ),
)
# Not part of `stage=all`: run by hand over a finished run.
TOOLS = ("audit", "report")


def names() -> tuple[str, ...]:
    return tuple(entry.name for entry in PIPELINE)


def upstream(name: str) -> list[str]:
    """The stages whose columns `name` reads: every stage before it."""
    order = names()
    return list(order[: order.index(name)])


def funnel_steps() -> tuple[tuple[str, str], ...]:
    return tuple(step for entry in PIPELINE for step in entry.funnel)


def stage_class(name: str) -> type[ShardStage]:
    entry = next(e for e in PIPELINE if e.name == name)
    module, _, attribute = entry.cls.partition(":")
    found: type[ShardStage] = getattr(importlib.import_module(module), attribute)
    if found.name != name:
        raise TypeError(f"{entry.cls} is stage {found.name!r}, but curate.pipeline lists it as {name!r}")
    return found

"""The data card says when the run looked at fewer tiles than the preset was calibrated with: strict's figures
come from every tile (curate calibrate forces tile_policy=always), a run under tile_policy=auto skipped some."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.configload import load_config
from curate.datacard import Tally, _human_filter

SAID = "These figures were measured with every tile looked at (`detect.tile_policy=always`). This run used `auto`"


def card_section(tmp_path: Path, *overrides: str) -> str:
    (tmp_path / "models").mkdir(exist_ok=True)
    cfg = load_config([f"run.dir={tmp_path / 'run'}", "stage=release", f"models.dir={tmp_path / 'models'}", *overrides])
    return "\n".join(_human_filter(cfg, Tally()))


def test_a_run_under_auto_is_told_apart_from_the_calibration(tmp_path: Path) -> None:
    text = card_section(tmp_path)  # the defaults: strict, tile_policy=auto
    assert SAID in text
    assert "already scores at 0.7 or more get no tiles" in text and "reaches 0.001 are looked at" in text


@pytest.mark.parametrize("overrides", [("detect.tile_policy=always",), ("decide.preset=pass_v1",)])
def test_nothing_is_said_where_the_tiles_do_not_differ_or_no_tiles_bar_was_calibrated(
    tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    assert "This run used `auto`" not in card_section(tmp_path, *overrides)

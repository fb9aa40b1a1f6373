"""Reasons come from a closed set per stage; a stage that invents one fails its shard instead of landing."""

from __future__ import annotations

import pandas as pd
import pytest

from curate.schema import REASONS, check_reasons


def test_known_reasons_pass_and_nulls_mean_not_reached() -> None:
    check_reasons("fetch", pd.Series(["ok", "not_found", None, "decompression_bomb"]))
    check_reasons("release", pd.Series(["ok", "license:not_allowed", "detect:face", "fetch:timeout"]))


def test_free_text_is_refused() -> None:
    with pytest.raises(ValueError, match="connection reset by peer"):
        check_reasons("fetch", pd.Series(["ok", "connection reset by peer"]))
    with pytest.raises(ValueError, match="fetch:made_up"):
        check_reasons("release", pd.Series(["fetch:made_up"]))


def test_release_set_is_built_from_the_stages() -> None:
    assert "detect:uncertain" in REASONS["release"] and "ingest:video" in REASONS["release"]
    assert "decision:face" not in REASONS["release"]

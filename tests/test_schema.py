"""Reasons come from a closed set per stage; a stage that invents one fails its shard instead of landing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from curate.io.tars import WebDatasetWriter, iter_tar
from curate.schema import REASONS, check_reasons, safe_id
from curate.stages.release import pass_member


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


def test_the_webdataset_writer_checks_the_key_rule_where_members_are_written(tmp_path: Path) -> None:
    path = tmp_path / "00000.tar"
    for bad in ("a.b", "a/b", "", "图片"):
        with pytest.raises(ValueError, match="WebDataset key"), WebDatasetWriter(path) as tar:
            tar.add(bad, {"jpg": b"x"})
        assert not path.exists(), "a refused sample leaves no shard behind"
    with WebDatasetWriter(path) as tar:
        tar.add(safe_id("a.b"), {"jpg": b"image", "json": b"{}"})
        tar.add("b", {"jpg": b"image"})
    key = safe_id("a.b")
    assert [name for name, _ in iter_tar(path)] == [f"{key}.jpg", f"{key}.json", "b.jpg"]
    with pytest.raises(ValueError, match="image id"):
        pass_member("a.b", "jpeg")

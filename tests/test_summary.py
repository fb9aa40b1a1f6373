"""The end-of-run summary says what went wrong: stages that stopped most rows, failed shards, refusals."""

from __future__ import annotations

from pathlib import Path

from conftest import run_curate

from curate.run import summary
from curate.runner import StageReport


def report(stage: str, **counts: int) -> StageReport:
    found = StageReport(stage, shards=1)
    found.counts = {key.replace("__", "/"): value for key, value in counts.items()}
    return found


def test_alarm_when_a_stage_stops_more_than_the_fraction() -> None:
    text = summary([report("license", ok__ok=4, rejected__not_allowed=6, not_reached=90)], alarm_fraction=0.5)
    assert "WARNING license stopped 60% of the rows it saw (6 of 10: rejected/not_allowed=6)" in text
    # At or under the fraction: quiet. Rows the stage never saw do not count.
    assert "WARNING" not in summary([report("license", ok__ok=5, rejected__not_allowed=5, not_reached=90)], 0.5)


def test_alarm_when_every_row_is_stopped_whatever_the_fraction() -> None:
    text = summary([report("ingest", rejected__short_row=3)], alarm_fraction=1.0)
    assert "WARNING ingest stopped EVERY row it saw (3 of 3" in text


def test_failed_shards_are_named_in_the_summary() -> None:
    failed = report("fetch", ok__ok=3, failed__shard_failed=2)
    failed.failed_shards = [1]
    failed.failures = ["fetch 1: OSError: gone (traceback: run/stats/fetch/part-00001.error.txt)"]
    text = summary([failed])
    assert "FAILED fetch 1: OSError: gone (traceback: run/stats/fetch/part-00001.error.txt)" in text
    assert "shard(s) 1 failed after every retry" in text and "allow_failed_shards" in text


def test_a_real_run_that_rejects_every_licence_warns(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    urls = tmp_path / "urls.csv"
    urls.write_text("url,license\nhttp://127.0.0.1:9/a.jpg,All Rights Reserved\nhttp://127.0.0.1:9/b.jpg,CC BY-NC\n")
    run_dir = tmp_path / "run"
    for stage in ("ingest", "license"):
        assert run_curate("pipeline=sample", "ingest.source=urls", f"ingest.path={urls}", f"run.dir={run_dir}",
                          f"stage={stage}") == 0  # fmt: skip
    assert "WARNING license stopped EVERY row it saw (2 of 2: rejected/" in capsys.readouterr().out


def test_a_file_read_with_the_wrong_layout_warns_and_names_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    wrong = tmp_path / "not_yfcc.tsv"
    wrong.write_text("".join(f"{i}\thttp://example.invalid/{i}.jpg\n" for i in range(20)))  # a URL list, not YFCC
    assert run_curate("pipeline=sample", f"ingest.path={wrong}", f"run.dir={tmp_path / 'run'}", "stage=ingest") == 0
    out = capsys.readouterr().out
    assert "WARNING ingest stopped EVERY row it saw (20 of 20" in out
    assert f"WARNING ingest {wrong}" in out or "WARNING ingest not_yfcc.tsv" in out


def test_release_never_alarms_its_filter_and_sample_remove_most_rows_by_design() -> None:
    text = summary([report("release", ok__ok=10, **{"rejected__detect:face": 30})], alarm_fraction=0.5)
    assert "WARNING" not in text

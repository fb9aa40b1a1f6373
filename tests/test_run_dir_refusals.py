"""A published release refuses every change of what it is made from, not only the review decisions and thresholds
test_run_dir_truth.py tries: a takedown list, new candidates and another licence policy. Each time the same
version exits 1, leaves every byte of release/v1 alone and prints the next version's command, which then works.
And `curate evaluate run.dir=RUN` scores with the run's remembered detectors and thresholds, with its progress
shown on a terminal.

One small run (8 rows of the sample, no detector: a run without models is quick) is made once; every test works
on its own copy of it."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, MODELS, NO_FILTER, run_curate, tree_bytes

from curate import evaluate
from curate.configload import load_config
from curate.run import SAMPLE_DIR, main

# No detector runs (NO_FILTER's bars then apply to nothing): every licensed, fetched row is released.
NO_DETECTORS = ["detect.face=[]", "detect.person=[]", "detect.hand=[]", *NO_FILTER]
SAMPLE_ROWS = (SAMPLE_DIR / "yfcc_sample.tsv").read_text().splitlines(keepends=True)
# Rows 0-7: six CC BY photos, one CC BY-NC (row 3) and one CC BY-SA (row 6), which the licence filter drops.
FIRST_ROWS = 8
HINT = "(with this command's overrides), run:"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("refusals")
    candidates = base / "candidates.tsv"
    candidates.write_text("".join(SAMPLE_ROWS[:FIRST_ROWS]))
    root = base / "run"
    assert run_curate(f"run.dir={root}", f"ingest.path={candidates}", "ingest.num_shards=2", *NO_DETECTORS) == 0
    return root


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def released(root: Path, version: str) -> pd.DataFrame:
    return pd.read_parquet(root / "release" / version / "manifest.parquet").set_index("image_id")


def takedown_one(run: Path, tmp_path: Path) -> list[str]:
    chosen = released(run, "v1").query("status == 'kept'").index.sort_values()[0]
    takedowns = tmp_path / "takedowns.csv"
    takedowns.write_text(f"image_id,reason,date\n{chosen},owner request,2026-12-01\n")
    return [f"release.takedowns={takedowns}"]


def more_candidates(run: Path, tmp_path: Path) -> list[str]:
    # The input again with four more rows (8-11, CC BY), under a new name: the module's file is every copy's.
    candidates = tmp_path / "more.tsv"
    candidates.write_text("".join(SAMPLE_ROWS[: FIRST_ROWS + 4]))
    return [f"ingest.path={candidates}"]


def allow_share_alike(run: Path, tmp_path: Path) -> list[str]:
    return ["license.allow=[cc-by,cc-by-sa]"]


def removed_by_takedown(v1: pd.DataFrame, v2: pd.DataFrame, changes: pd.Series) -> None:
    gone = changes[changes == "removed"].index.tolist()
    assert len(gone) == 1 and v2.loc[gone[0], "reason"] == "select:takedown"
    assert (changes == "added").sum() == 0  # a takedown pulls in no replacement


def added_new_candidates(v1: pd.DataFrame, v2: pd.DataFrame, changes: pd.Series) -> None:
    added = changes[changes == "added"].index
    assert len(added) > 0 and not added.isin(v1.index).any()  # ids v1 never saw
    assert (changes == "removed").sum() == 0


def added_share_alike(v1: pd.DataFrame, v2: pd.DataFrame, changes: pd.Series) -> None:
    added = changes[changes == "added"].index
    assert len(added) == 1 and v2.loc[added[0], "license_code"] == "cc-by-sa"
    assert v1.loc[added[0], "reason"].startswith("license:")  # in v1 too, dropped by the licence filter


@dataclass(frozen=True)
class Change:
    name: str
    overrides: Callable[[Path, Path], list[str]]  # (run, tmp_path) -> the invocation's overrides
    check_v2: Callable[[pd.DataFrame, pd.DataFrame, pd.Series], None]  # (v1, v2 manifests, v2's changes by id)


CHANGES = [
    Change("takedown", takedown_one, removed_by_takedown),
    Change("new_candidates", more_candidates, added_new_candidates),
    Change("licence_policy", allow_share_alike, added_share_alike),
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_a_changed_release_input_is_refused_and_the_hinted_next_version_works(
    change: Change, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = run / "release" / "v1"
    published = tree_bytes(v1)
    card = (run / "data_cards" / "v1.md").read_bytes()
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()

    overrides = change.overrides(run, tmp_path)
    # stage=all first: it brings the stages before release up to date (new candidates and another licence policy
    # reach release's inputs only so), then stage=release alone, which must refuse as well.
    for stage in ("stage=all", "stage=release"):
        assert main([f"run.dir={run}", stage, *overrides, *FAST]) == 1, stage
        out = capsys.readouterr().out
        assert "release v1 is published" in out, stage
        assert f"release.version=v2 release.previous={v1}" in out, stage
        assert tree_bytes(v1) == published, stage
        assert (run / "data_cards" / "v1.md").read_bytes() == card, stage
        assert (run / "config.yaml").read_bytes() == config, stage  # a refused invocation is not remembered
        assert not (run / "release" / "v2").exists(), stage

    # the printed command, exactly as printed ("curate run" is this module's main)
    command = shlex.split(out.split(HINT)[1].strip().splitlines()[0])
    assert command[:2] == ["curate", "run"]
    assert main(command[2:]) == 0
    assert tree_bytes(v1) == published
    assert (run / "data_cards" / "v1.md").read_bytes() == card
    changes = pd.read_parquet(run / "release" / "v2" / "diff.parquet").set_index("image_id")["change"]
    change.check_v2(released(run, "v1"), released(run, "v2"), changes)
    # v2 is published now: the same command again changes neither version
    made = tree_bytes(run / "release" / "v2")
    assert main(command[2:]) == 0
    assert tree_bytes(v1) == published and tree_bytes(run / "release" / "v2") == made


def test_an_unchanged_re_run_of_a_published_version_is_a_no_op(run: Path) -> None:
    before = tree_bytes(run / "release")
    assert main([f"run.dir={run}", "stage=release", *FAST]) == 0
    assert main([f"run.dir={run}", *FAST]) == 0
    assert tree_bytes(run / "release") == before


# --- curate evaluate run.dir=RUN -------------------------------------------------------------------------------

needs_models = pytest.mark.skipif(
    not (MODELS / "retinaface_mobilenet0.25_Final.pth").exists(), reason=f"no RetinaFace weights in {MODELS}"
)
# Two of each label from the bundled sample: enough for recall and false removals, quick for one face model.
LABELLED = ["caffe_cat.jpg", "dlib_mmod_cars_test_image.jpg", "gfp_adele_crop.jpg", "rembg_girl-1.jpg"]


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    folder = tmp_path / "labelled"
    (folder / "images").mkdir(parents=True)
    labels = pd.read_csv(SAMPLE_DIR / "labels.csv", dtype=str)
    labels = labels[labels["file"].isin([f"images/{name}" for name in LABELLED])]
    assert len(labels) == len(LABELLED) and set(labels["label"]) == {"human", "no_human"}
    for name in LABELLED:
        shutil.copy(SAMPLE_DIR / "images" / name, folder / "images" / name)
    labels.to_csv(folder / "labels.csv", index=False)
    return folder


# Not the defaults: one face model, no person or hand model, a face bar of its own and a smaller face side.
RUN_DETECTORS = [
    "detect.face=[retinaface_mnet025]",
    "detect.person=[]",
    "detect.hand=[]",
    "detect.face_max_side=1024",
    "decide.preset=custom",
    "decide.face=0.3",
]


@needs_models
def test_evaluate_with_a_run_dir_uses_the_runs_detectors_and_thresholds(labelled: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    # stage=ingest is enough to make a run directory that remembers its config (no detect work)
    assert run_curate(f"run.dir={root}", "stage=ingest", *RUN_DETECTORS) == 0
    assert load_config([f"run.dir={root}"]).detect.face == ["retinaface_mnet025"]
    before = tree_bytes(root)

    out = tmp_path / "eval.json"
    assert evaluate.main([f"images={labelled}", f"out={out}", f"run.dir={root}"]) == 0
    result = json.loads(out.read_text())
    assert result["detectors"] == {"face": ["retinaface_mnet025"], "person": [], "hand": [], "clip": ""}
    assert result["decide"]["preset"] == "custom"
    assert result["decide"]["bars"]["face_retinaface_mnet025_max"]["reject"] == 0.3
    assert list(result["decide"]["bars"]) == ["face_retinaface_mnet025_max"]
    assert result["detect"]["face_max_side"] == 1024
    assert result["evaluation_set"] == {"name": "labelled", "size": len(LABELLED)}
    assert tree_bytes(root) == before  # nothing is written to the run


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a user's would."""

    def isatty(self) -> bool:
        return True


def test_evaluate_shows_its_progress_on_a_terminal(labelled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tqdm(disable=None) is off unless stderr is a terminal, and no option or environment variable turns it on
    # elsewhere (TQDM_DISABLE only sets a default, which the explicit disable=None overrides): so a terminal it is.
    # No detector: the progress is what is checked, not the scores.
    cfg = load_config(["stage=detect", *NO_DETECTORS, "detect.batch_size=3"])  # two batches
    labels = evaluate.read_labels(labelled / "labels.csv")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    scored, unreadable = evaluate.score_folder(cfg, labelled, labels)
    assert len(scored) == len(LABELLED) and unreadable == []
    shown = terminal.getvalue()
    assert "evaluate" in shown and f"{len(LABELLED)}/{len(LABELLED)}" in shown and "image" in shown


def test_evaluate_shows_no_progress_when_stderr_is_not_a_terminal(
    labelled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(["stage=detect", *NO_DETECTORS])
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    evaluate.score_folder(cfg, labelled, evaluate.read_labels(labelled / "labels.csv"))
    assert plain.getvalue() == ""

"""The data card states only what the run shows: one funnel (the same as the report's and the thresholds
notebook's), thresholds of the detectors that ran, measured performance or the plain statement that it was not
measured, licences including unknown ones, attribution as far as the data holds it, reviewer overrides, the audit
of this or the previous release, and the versions of everything that produced scores or bytes."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
from conftest import MODELS, REPO, run_curate

from curate.config import DETECTOR_FAMILIES, CurateConfig, DecideConfig, DetectConfig
from curate.datacard import Tally, render_data_card
from curate.detect.decide import rule
from curate.evaluate import main as evaluate
from curate.funnel import RELEASED, FunnelCounter, first_stop, funnel_rows
from curate.manifest import detect_columns
from curate.models.registry import REGISTRY, pinned
from curate.review import ledger
from curate.review.report import funnel_counts
from curate.review.thresholds import funnel_table
from curate.runconfig import SAMPLE_DIR, load_run_config


def card_of(run_dir: Path, version: str = "v1") -> str:
    return (run_dir / "release" / version / "DATA_CARD.md").read_text()


def manifest(run_dir: Path, version: str = "v1") -> pd.DataFrame:
    return pd.read_parquet(run_dir / "release" / version / "manifest.parquet")


def section(card: str, title: str) -> str:
    """The text of the card's first section with this title, up to the next section."""
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in `text`."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("|"))
    body = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :]))
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


def card_funnel(card: str) -> list[tuple[str, int]]:
    return [(row[0], int(row[1])) for row in table(section(card, "Funnel"))]


def families(card: str) -> list[str]:
    return [row[1] for row in table(section(card, "Human filter"))]


# The sample's strict bars, as an evaluation of its models records them.
STRICT = rule(DecideConfig("strict"), [c.name for c in detect_columns(DetectConfig())]).as_json()


def config(run_dir: Path, **release: Any) -> CurateConfig:
    cfg = load_run_config(run_dir)
    return replace(cfg, release=replace(cfg.release, **release))


def render(run_dir: Path, version: str = "v1", **release: Any) -> str:
    """The card of a release as render_data_card makes it from that release's manifest (without release's
    takedown and diff sections), under a config changed as given."""
    cfg = config(run_dir, version=version, **release)
    tally = Tally()
    tally.add(manifest(run_dir, version))
    return render_data_card(cfg, tally, 4)


# The sample's detectors (the default stack) and their pinned weights, as an evaluation of them records them.
DEFAULT = DetectConfig()
DEFAULT_MODELS = {
    family: [{"name": name, "sha256": pinned(REGISTRY[name])} for name in getattr(DEFAULT, family)]
    for family in DETECTOR_FAMILIES
}


def evaluation(path: Path, **changes: object) -> Path:
    """An evaluation JSON with the keys `python -m curate.evaluate ... out=FILE` writes, for this release's models."""
    result = {
        "recall": 0.9,
        "recall_without_review": 0.8,
        "false_removal_rate": 0.25,
        "review": {"images": 2, "share": 0.1111, "human": 1, "no_human": 1},
        "n_human": 10,
        "n_no_human": 8,
        "per_category": {
            "human/full_body": {"n": 6, "recall": 1.0},
            "human/small_distant_people": {"n": 4, "recall": 0.75},
            "no_human/animal": {"n": 4, "false_removal_rate": 0.5},
            "no_human/landscape": {"n": 4, "false_removal_rate": 0.0},
        },
        "per_detector": {"face_retinaface_mnet025": {"threshold": 0.9, "recall": 0.6, "false_removal_rate": 0.25}},
        "missed": [{"file": "images/far.jpg", "category": "small_distant_people"}],
        "false_removals": [
            {"file": "images/dog.jpg", "category": "animal", "reason": "face"},
            {"file": "images/macaque.jpg", "category": "animal", "reason": "face"},
        ],
        "decide": STRICT,
        "detectors": {**{family: getattr(DEFAULT, family) for family in DETECTOR_FAMILIES}, "clip": ""},
        "evaluation_set": {"name": "handmade", "size": 18},
        "models": {**DEFAULT_MODELS, "clip": None},
        "detect": {"face_max_side": 2048, "person_tiles": 3, "person_tile_min_side": 0, "person_tiles_skip": []},
    }
    path.write_text(json.dumps({**result, **changes}, indent=2, sort_keys=True))
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample recipe: human filter, dedup, owner cap 2, sample of 10; no evaluation, no review."""
    run_dir = tmp_path_factory.mktemp("card") / "run"
    assert run_curate(f"run.dir={run_dir}") == 0
    return run_dir


class Reviewed(NamedTuple):
    run_dir: Path
    face: str  # the image the filter rejected for a face, that a reviewer kept
    audited: list[str]  # v1's audit sample: removed, unsure, then kept


@pytest.fixture(scope="module")
def reviewed(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    """v2 of a copy of the sample run: an audit of v1 checked, a reviewer's keep of a face the filter rejected,
    and a hand-made evaluation."""
    base = tmp_path_factory.mktemp("reviewed")
    run_dir = base / "run"
    shutil.copytree(sample, run_dir)
    assert run_curate(f"run.dir={run_dir}", "stage=audit", "audit.size=4") == 0
    audited = pd.read_parquet(run_dir / "audit" / "v1" / "sample.parquet")["image_id"].tolist()
    rows = manifest(run_dir)
    face = sorted(rows.loc[rows["reason"] == "detect:face", "image_id"])[0]
    when = "2026-01-02T03:04:05.000000Z"
    ledger.append(run_dir, [(audited[0], "remove"), (audited[1], "unsure")], reviewer="auditor", timestamp=when)
    ledger.append(run_dir, [(i, "keep") for i in audited[2:]], reviewer="auditor", timestamp=when)
    ledger.append(run_dir, [(face, "keep")], reviewer="tester", note="a dog's face", timestamp=when)
    path = evaluation(base / "evaluation.json")
    args = ["release.version=v2", f"release.previous={run_dir / 'release' / 'v1'}", f"release.evaluation={path}"]
    assert run_curate(f"run.dir={run_dir}", *args) == 0
    return Reviewed(run_dir, face, audited)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's images as a plain folder: no licence, no owner, no photo page; no person detector."""
    run_dir = tmp_path_factory.mktemp("folder") / "run"
    args = [
        "pipeline=folder",
        f"ingest.path={SAMPLE_DIR / 'images'}",
        "license.keep_unknown=true",
        "detect.person=[]",
        "detect.hand=[]",
        "decide.preset=custom",
        "decide.face=0.9",
    ]  # faces only: strict's bars need the rest
    assert run_curate(f"run.dir={run_dir}", *args) == 0
    return run_dir


def test_first_stop_tells_a_scoring_failure_from_the_filters_verdict() -> None:
    rows = pd.DataFrame(
        {
            "status": ["kept", "failed", "rejected", "review", "rejected", "review", "rejected"],
            "reason": [
                "ok",
                "detect:decode_error",
                "detect:face",
                "detect:uncertain",
                "dedup:exact_duplicate",
                "review:unsure",
                "select:takedown",
            ],
            "detect_status": ["ok", "failed", "ok", "ok", "ok", "ok", "ok"],
        }
    )
    assert first_stop(rows).tolist() == [RELEASED, "detect", "filter", "filter", "dedup", "review", "select"]
    counter = FunnelCounter()
    counter.add(rows.iloc[:4])
    counter.add(rows.iloc[4:])  # shard by shard: the same as all at once
    whole = FunnelCounter()
    whole.add(rows)
    assert counter == whole and counter.released == 1 and funnel_rows(counter)[-1].remaining == 1
    with pytest.raises(ValueError, match="kept"):
        first_stop(rows.assign(reason=["detect:face", *rows["reason"][1:]]))


def test_the_cards_funnel_is_the_reports_and_the_notebooks(sample: Path) -> None:
    card = card_of(sample)
    funnel = card_funnel(card)
    cfg = load_run_config(sample)
    assert funnel == funnel_counts(cfg)
    notebook = funnel_table(cfg)
    assert list(zip(notebook["step"], notebook["images left"], strict=True)) == funnel
    released = int((manifest(sample)["status"] == "kept").sum())
    assert funnel[-1][1] == released == 10
    assert f"Released: {released} of 41 candidates." in card
    # each step leaves what the previous one left minus what it stopped, counted by first stopping reason
    rows = table(section(card, "Funnel"))
    for before, after in itertools.pairwise(rows):
        assert int(before[1]) - int(after[2]) == int(after[1])
    stopped = dict(zip(notebook["step"], notebook["stopped here"], strict=True))
    reasons = manifest(sample)["reason"]
    assert (
        stopped["passed the human filter (or a reviewer kept it)"]
        == reasons.str.match(r"detect:(face|person|hand|clip_human|uncertain)$").sum()
    )
    assert stopped["not a duplicate"] == reasons.str.startswith("dedup:").sum()


def test_thresholds_only_for_the_families_that_ran(sample: Path, folder: Path) -> None:
    # the sample runs the default stack (two face models, 3x3 tiles, hands), no CLIP
    assert families(card_of(sample)) == ["face", "face", "person", "person_tiles", "hand"]
    assert families(card_of(folder)) == ["face", "face"]
    assert "yolox_nano" not in section(card_of(folder), "Models")
    decide = section(card_of(folder), "Configuration").split("decide:", 1)[1].split("\ndedup:", 1)[0]
    assert "face_retinaface_mnet025_max" in decide and "reject: 0.9" in decide
    assert "person" not in decide and "clip" not in decide
    cfg = load_run_config(sample)
    cfg = replace(cfg, detect=replace(cfg.detect, person_tiles=1), decide=replace(cfg.decide, preset="custom"))
    tally = Tally()
    tally.add(manifest(sample))
    assert families(render_data_card(cfg, tally, 4)) == ["face", "face", "person", "hand"]


def test_not_measured_without_an_evaluation(sample: Path) -> None:
    card = card_of(sample)
    assert "were **not measured for these models**" in section(card, "Measured performance of the human filter")
    limitations = section(card, "Known limitations")
    assert "limitations are **unknown**" in limitations and "Automated filters miss people" in limitations
    assert "No audit has been checked" in limitations


def test_measured_figures_and_limitations_from_the_evaluation(reviewed: Reviewed) -> None:
    card = card_of(reviewed.run_dir, "v2")
    measured = section(card, "Measured performance of the human filter")
    assert "evaluation set **handmade** (18 labelled images: 10 with people, 8 without)" in measured
    assert table(measured)[:2] == [
        ["recall (people removed)", "0.900", "10"],
        ["false-removal rate (no people, removed)", "0.250", "8"],
    ]
    assert "Warning" not in card and "not measured" not in card
    limitations = section(card, "Known limitations")
    misses, _, removals = limitations.partition("Images without people that the filter removed")
    assert table(misses) == [["small_distant_people", "4", "1", "0.750"]]
    assert table(removals) == [["animal", "4", "2", "0.500", "face 2"]]
    audited = "The audit (v1, the previous release; v2 itself has no audit sample yet) bounds how many released images"
    assert audited + " still show a person: 33.33%" in limitations


def test_an_evaluation_of_other_models_or_settings_is_flagged(reviewed: Reviewed, tmp_path: Path) -> None:
    run_dir = reviewed.run_dir
    other = evaluation(
        tmp_path / "other.json",
        models={
            **DEFAULT_MODELS,
            "face": [{"name": "retinaface_mnet025", "sha256": "0" * 64}, *DEFAULT_MODELS["face"][1:]],
            "person": [],
            "clip": None,
        },
        detect={"face_max_side": 2048, "person_tiles": 1, "person_tile_min_side": 0, "person_tiles_skip": []},
        decide={**STRICT, "bars": {**STRICT["bars"], "face_retinaface_mnet025_max": {"reject": 0.5, "review": 1.0}}},
    )
    measured = section(render(run_dir, "v2", evaluation=str(other)), "Measured performance of the human filter")
    assert "**Warning: the evaluation ran a different filter from this release's**" in measured
    assert f"retinaface_mnet025: evaluated weights sha256 {'0' * 64}" in measured
    assert "person models: evaluated none, released with yolox_nano" in measured
    assert "detect.person_tiles: evaluated 1, released with 3" in measured
    assert "decide face_retinaface_mnet025_max: evaluated reject 0.5 review 1.0, released with reject 1.0" in measured


def test_reviewer_overrides_and_the_previous_releases_audit(reviewed: Reviewed) -> None:
    run_dir, face = reviewed.run_dir, reviewed.face
    card = card_of(run_dir, "v2")
    review = section(card, "Human review")
    assert "**1 image(s) the filter rejected or sent to review were kept by a reviewer**" in review
    listed = table(review.split("were kept by a reviewer", 1)[1])
    assert [row[:4] for row in listed] == [[face, "reject: face", "tester", "2026-01-02"]]
    assert "1 removed (`review:removed`), 1 left unsure and not released (`review:unsure`)" in review
    assert "**Residual humans** (audit of v1, the previous release; v2 itself has no audit sample yet)" in review
    assert "1 of 3 checked images (a seeded random sample of 4 from 10 released)" in review
    # the funnel counts the reviewer's keep as passing the filter, and the removal and the unsure at review
    rows = manifest(run_dir, "v2")
    assert rows.set_index("image_id").loc[face, "reason"] != "detect:face"
    funnel = {row[0]: row for row in table(section(card, "Funnel"))}
    assert funnel["not removed or left unsure by a reviewer"][2:] == ["2", "removed 1, unsure 1"]
    cfg = config(run_dir, version="v2")
    assert card_funnel(card) == funnel_counts(cfg)
    assert card_funnel(card)[-1][1] == int((rows["status"] == "kept").sum())


def test_unknown_licences_and_missing_attribution_are_said(folder: Path) -> None:
    card = card_of(folder)
    released = int((manifest(folder)["status"] == "kept").sum())
    assert released > 0
    licences = section(card, "Licences of released images")
    assert table(licences) == [["unknown", str(released)]]
    assert f"**{released} released image(s) have no known licence**" in licences
    assert "Every released image" not in card and "keeps its attribution" not in card
    assert "**Not every released image can be attributed from this data**" in licences
    assert table(licences.split("Attribution as far as", 1)[1])[0] == [
        "an owner name (`unickname`)",
        "0",
        str(released),
    ]


def test_assumed_licences_are_marked(sample: Path) -> None:
    cfg = load_run_config(sample)
    cfg = replace(cfg, ingest=replace(cfg.ingest, assume_license="cc-by"))
    tally = Tally()
    tally.add(manifest(sample).assign(license_assumed=True))
    licences = section(render_data_card(cfg, tally, 4), "Licences of released images")
    assert table(licences) == [["cc-by (assumed: ingest.assume_license)", "10"]]
    sample_card = section(card_of(sample), "Licences of released images")
    assert table(sample_card) == [["cc-by", "10"]] and "Every released image has an owner name" in sample_card


def test_models_and_software(sample: Path, tmp_path: Path) -> None:
    card = card_of(sample)
    models = {row[0]: row for row in table(section(card, "Models"))}
    assert set(models) == {"retinaface_mnet025", "blazeface_full", "yolox_nano", "mediapipe_hands"}  # no CLIP row
    spec = REGISTRY["retinaface_mnet025"]
    # the digest detect verified on disk when it ran (stats/detect_weights.json), which is the registry's pin
    assert models["retinaface_mnet025"][1:5] == [
        "face",
        spec.url,
        spec.sha256,
        "pinned in the registry; verified on disk when detect ran",
    ]
    software = {row[0]: row[1] for row in table(section(card, "Software"))}
    for name in ("torch", "torchvision", "open_clip_torch", "onnxruntime", "numpy", "faiss-cpu", "pillow"):
        assert software[name] == version(name)
    # a model without a published digest: the one recorded at its first download, or "not recorded yet"
    cfg = load_run_config(sample)
    cfg = replace(
        cfg,
        models=replace(cfg.models, dir=str(tmp_path)),
        detect=replace(cfg.detect, face=["retinaface_r50"], clip_model="ViT-B-32"),
        decide=replace(cfg.decide, preset="custom"),  # strict has no bar for R50: the config would be refused
    )
    tally = Tally()
    tally.add(manifest(sample))
    rows = {row[0]: row for row in table(section(render_data_card(cfg, tally, 4), "Models"))}
    assert rows["retinaface_r50"][3:5] == ["-", "not recorded yet (no published digest; recorded at first download)"]
    assert rows["ViT-B-32/openai"][1:3] == ["clip", "open_clip registry"]
    (tmp_path / "retinaface.pth.sha256").write_text("ab" * 32 + "\n")
    rows = {row[0]: row for row in table(section(render_data_card(cfg, tally, 4), "Models"))}
    assert rows["retinaface_r50"][3:5] == ["ab" * 32, "recorded at first download (no published digest)"]


def test_the_card_is_deterministic_and_names_no_path(sample: Path) -> None:
    card = card_of(sample)
    assert render(sample) == render(sample)
    for path in (sample, sample.parent, REPO, MODELS, SAMPLE_DIR):
        assert str(path) not in card
    assert "path: yfcc_sample.tsv" in section(card, "Configuration")


def test_evaluate_records_the_set_models_and_settings_for_the_card(sample: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(SAMPLE_DIR / "labels.csv")
    chosen = pd.concat([labels[labels["label"] == "human"].head(2), labels[labels["label"] == "no_human"].head(2)])
    chosen.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "evaluation.json"
    argv = [f"images={SAMPLE_DIR}", f"labels={tmp_path / 'labels.csv'}", f"out={out}", f"models.dir={MODELS}"]
    assert evaluate(argv) == 0
    result = json.loads(out.read_text())
    assert result["evaluation_set"] == {"name": "sample_data", "size": 4}
    assert {k: v for k, v in result["models"].items() if k != "clip"} == DEFAULT_MODELS
    assert result["models"]["clip"] is None
    settings = {"face_max_side": 2048, "person_tiles": 3, "person_tile_min_side": 0, "person_tiles_skip": []}
    assert result["detect"] == settings
    # the sample release ran the same filter: its card states the figures without a warning
    measured = section(render(sample, evaluation=str(out)), "Measured performance of the human filter")
    assert "evaluation set **sample_data** (4 labelled images: 2 with people, 2 without)" in measured
    assert "Warning" not in measured

"""Detectors say who they are, and detect's fingerprint is made of it.

- Golden outputs: each offline detector scores a few sample photos; the max scores (3 decimals) and box counts
  are kept in tests/golden/<detector>.json with the detector's identity (its version among it). Outputs that
  change while the identity does not fail: bump the detector's `version` (so that detect re-runs on resume) and
  regenerate with `python tests/test_detector_identity.py --regenerate` (all of them; name detectors after it to
  write only theirs, e.g. a new one's).
- The fingerprint (`DetectStage(cfg).fingerprint_config()`) changes with a code constant, the weights file and a
  detector's version, and not with the speed-only settings; a resumed run re-detects exactly then.
- The registry is the factory: a model listed under the wrong family, or asked for tiles it cannot score, is
  refused with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST, MODELS, REPO, run_curate
from PIL import Image

from curate.config import DETECTOR_FAMILIES, ConfigError, DetectConfig
from curate.configload import load_config
from curate.detect.types import COUNT_ABOVE
from curate.io.atomic import sha256_file
from curate.models import registry
from curate.models.registry import REGISTRY, check_detectors
from curate.run import main
from curate.stages import detect as detect_stage
from curate.stages.detect import DetectStage

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = "python tests/test_detector_identity.py --regenerate"
PHOTOS = (
    "dlib_000288_00470387.jpg",  # a face close up
    "rembg_girl-1.jpg",  # a person, full body
    "caffe_cat.jpg",  # no human
    "ns_golden_gate.jpg",  # no human, a landscape photo
)
# The detect settings the golden outputs are for (written out: a changed default is not a changed detector).
GOLDEN_DETECT = DetectConfig(batch_size=4, face_max_side=2048, person_tiles=3, person_tile_min_side=0, box_floor=0.1)
# CLIP: no weights exist offline, so a small randomly initialised open_clip model, seeded, with few prompts.
CLIP_ARGS: dict[str, Any] = {
    "model": "ViT-S-32",
    "pretrained": None,
    "human_classes": ("a person", "a human face"),
    "other_classes": ("a landscape with no people", "an animal"),
    "templates": ("a photo of {}.", "a blurry photo of {}."),
}


def on_disk(name: str) -> bool:
    return all((MODELS / f.filename).is_file() for f in registry.files(REGISTRY[name]))


# every registry detector whose weights are here (the torchvision and R50 ones are not), and CLIP
GOLDEN_DETECTORS = [n for n, spec in REGISTRY.items() if spec.kind in DETECTOR_FAMILIES and on_disk(n)] + ["clip"]


def photos() -> list[np.ndarray]:
    folder = REPO / "curate" / "sample_data" / "images"
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS]


def scored(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, outputs per photo) of one golden detector."""
    torch.set_num_threads(2)
    if name == "clip":
        from curate.detect.clip_filter import ClipHumanFilter

        torch.manual_seed(0)
        clip = ClipHumanFilter(**CLIP_ARGS)
        found = clip.score(photos())
        outputs = {
            photo: {"human_prob": round(float(p), 3), "top_class": top}
            for photo, p, top in zip(PHOTOS, found.human_prob, found.top_human_class, strict=True)
        }
        return clip.identity(), outputs
    from curate.detect.loaders import build

    detector = build(name, MODELS / REGISTRY[name].filename, "cpu", GOLDEN_DETECT)
    outputs = {}
    for photo, detections in zip(PHOTOS, detector.detect(photos()), strict=True):
        tiles = detections.tiles_best
        outputs[photo] = {
            "max": round(detections.max_score, 3),
            "tiles_max": None if tiles is None else round(tiles, 3),
            "count": detections.count_above(COUNT_ABOVE),
        }
    return detector.identity(), outputs


def differences(stored: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Per photo and value, where the outputs differ (scores by more than 1e-3, anything else at all)."""
    out = []
    for photo in sorted({*stored, *found}):
        for key in sorted({*stored.get(photo, {}), *found.get(photo, {})}):
            a, b = stored.get(photo, {}).get(key), found.get(photo, {}).get(key)
            close = isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-3 + 1e-9
            if a != b and not close:
                out.append(f"{photo} {key}: {a} -> {b}")
    return out


@pytest.mark.parametrize("name", GOLDEN_DETECTORS)
def test_outputs_change_only_with_the_identity(name: str) -> None:
    path = GOLDEN / f"{name}.json"
    assert path.exists(), f"no golden outputs for {name}: write them with `{REGENERATE}`"
    stored = json.loads(path.read_text())
    identity, outputs = scored(name)
    old, new = stored["identity"]["version"], identity["version"]
    assert old == new, f"{name}: version {old} -> {new}; regenerate the golden outputs with `{REGENERATE}`"
    changed = sorted(k for k in identity if identity[k] != stored["identity"].get(k))
    assert not changed, (
        f"{name}: its identity changed ({', '.join(changed)}), so detect re-runs; regenerate the golden outputs "
        f"with `{REGENERATE}`"
    )
    drift = differences(stored["outputs"], outputs)
    assert not drift, (
        f"{name}'s outputs changed while its identity (version {new}) did not, so a resumed run would keep stale "
        f"scores: bump {identity['class']}.version, then `{REGENERATE}`. Changed: " + "; ".join(drift)
    )


def regenerate(names: list[str]) -> None:
    """Write the golden outputs of `names` (all the golden detectors when empty)."""
    unknown = sorted(set(names) - set(GOLDEN_DETECTORS))
    if unknown:
        raise SystemExit(f"not golden detectors (or their weights are not in {MODELS}): {unknown}")
    GOLDEN.mkdir(exist_ok=True)
    for name in names or GOLDEN_DETECTORS:
        identity, outputs = scored(name)
        (GOLDEN / f"{name}.json").write_text(json.dumps({"identity": identity, "outputs": outputs}, indent=1) + "\n")
        print(f"wrote {GOLDEN / name}.json (version {identity['version']})")


# ---------------------------------------------------------------------------------------- the fingerprint

needs_models = pytest.mark.skipif(not on_disk("retinaface_mnet025"), reason="needs the offline weights")


def fingerprint(tmp_path: Path, *overrides: str, models: Path = MODELS) -> dict[str, Any]:
    cfg = load_config([f"run.dir={tmp_path / 'run'}", f"models.dir={models}", *overrides])
    found: dict[str, Any] = DetectStage(cfg).fingerprint_config()
    return found


def with_params(name: str, **params: Any) -> registry.ModelSpec:
    return dataclasses.replace(REGISTRY[name], params=params)


def copied_models(tmp_path: Path) -> Path:
    """A models dir holding copies of the default stack's files, for a test to change (copyfile: the originals
    may be read-only, and their mode would come along)."""
    models = tmp_path / "models"
    models.mkdir()
    for name in registry.needed(load_config([])):
        for file in registry.files(REGISTRY[name]):
            shutil.copyfile(MODELS / file.filename, models / file.filename)
    return models


def flip_a_byte(weights: Path) -> Path:
    """One bit of one byte in the middle of the file: one weight of the checkpoint, which still loads."""
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(data)
    return weights


def detect_markers(run_dir: Path) -> dict[str, str]:
    """Each shard's detect marker by file name: rewritten (its fingerprint, its wall time) when the shard re-runs
    and only then, so two reads that differ in a shard mean that shard ran detect again."""
    return {p.name: p.read_text() for p in sorted((run_dir / "stats" / "detect").glob("part-*.json"))}


@needs_models
def test_code_constants_are_in_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.detect.retinaface as retinaface
    import curate.detect.yolox as yolox

    base = fingerprint(tmp_path)
    changes: list[Callable[[], None]] = [
        lambda: monkeypatch.setattr(detect_stage, "MAX_BOXES", 5),  # what the stage stores
        lambda: monkeypatch.setattr(detect_stage, "COUNT_ABOVE", 0.6),
        lambda: monkeypatch.setattr(retinaface, "VARIANCES", (0.1, 0.25)),  # the priors' decoding
        lambda: monkeypatch.setattr(yolox, "PAD_VALUE", 0.0),  # the letterbox
        # a detector's NMS IoU, set by its registry entry
        lambda: monkeypatch.setitem(REGISTRY, "yolox_nano", with_params("yolox_nano", variant="nano", nms_iou=0.5)),
    ]
    for change in changes:
        change()
        assert fingerprint(tmp_path) != base
        monkeypatch.undo()
    assert fingerprint(tmp_path) == base


@needs_models
def test_a_detectors_version_is_in_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.detect.yolox import YoloxDetector

    base = fingerprint(tmp_path)
    monkeypatch.setattr(YoloxDetector, "version", "999")
    assert fingerprint(tmp_path)["detectors"]["person"]["yolox_nano"]["version"] == "999"
    assert fingerprint(tmp_path) != base


@needs_models
def test_speed_only_settings_are_not(tmp_path: Path) -> None:
    base = fingerprint(tmp_path)
    for override in ("detect.batch_size=3", "detect.device=cpu", "detect.batch_pixels=1000", "detect.torch_threads=1",
                     "detect.gpu_decode=false"):  # fmt: skip
        assert fingerprint(tmp_path, override) == base, override
    # an output setting, for contrast (custom bars: strict's need the tiles)
    assert fingerprint(tmp_path, "detect.person_tiles=1", "decide.preset=custom") != base


@needs_models
def test_the_weights_file_as_it_is_on_disk_is_in_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = copied_models(tmp_path)
    assert fingerprint(tmp_path, models=models) == fingerprint(tmp_path)  # a copy is the same weights
    weights = flip_a_byte(models / REGISTRY["retinaface_mnet025"].filename)
    changed = fingerprint(tmp_path, models=models)
    assert changed != fingerprint(tmp_path)
    digest = changed["detectors"]["face"]["retinaface_mnet025"]["weights"]
    assert digest == sha256_file(weights)

    # The pin refuses the changed file before any work; pinned to it, it loads, and the detector built from it
    # reports the digest the fingerprint holds.
    cfg = load_config([f"run.dir={tmp_path / 'run'}", f"models.dir={models}"])
    with pytest.raises(registry.ModelMissing, match="pinned"):
        DetectStage(cfg).before_work()
    spec = dataclasses.replace(REGISTRY["retinaface_mnet025"], sha256=digest)
    monkeypatch.setitem(REGISTRY, "retinaface_mnet025", spec)
    from curate.detect.loaders import face_detectors

    built = face_detectors(cfg.detect, cfg.models, "cpu")[0]  # the first of detect.face
    assert built.identity() == changed["detectors"]["face"]["retinaface_mnet025"]


@needs_models
def test_the_built_detectors_report_the_fingerprinted_identities(tmp_path: Path) -> None:
    """The client computes identities without building; a worker's built detectors must report the same (the
    stage refuses to score with others)."""
    from curate.stages.detect import Scorer, unlike

    checkpoint = tmp_path / "models" / "clip-ViT-S-32-test.pt"
    checkpoint.parent.mkdir()
    for name in registry.needed(load_config([])):  # the default stack's files
        for file in registry.files(REGISTRY[name]):
            (checkpoint.parent / file.filename).symlink_to(MODELS / file.filename)
    torch.manual_seed(0)
    from curate.detect.clip_filter import ClipHumanFilter

    torch.save(ClipHumanFilter("ViT-S-32", pretrained=None).model.state_dict(), checkpoint)
    cfg = load_config([f"run.dir={tmp_path / 'run'}", f"models.dir={checkpoint.parent}", "detect.clip_model=ViT-S-32",
                       "detect.clip_pretrained=test"])  # fmt: skip
    stage = DetectStage(cfg)
    scorer = Scorer(cfg)
    assert unlike(stage.identities, scorer.identities()) == []
    assert stage.identities["clip"]["weights"] == sha256_file(checkpoint)
    assert stage.identities["clip"]["params"]["pretrained"] == "test"  # the tag goes along with the file
    assert "human_classes" in stage.identities["clip"]["params"]  # the prompts are part of it

    # a worker whose weight file is another one than the client hashed: told, not silently scored
    other = dict(stage.identities, face={"retinaface_mnet025": {**stage.identities["face"]["retinaface_mnet025"],
                                                              "weights": "0" * 64}})  # fmt: skip
    assert unlike(other, scorer.identities()) == ["face retinaface_mnet025 differs in weights"]


def test_a_finished_run_needs_no_weights_for_its_fingerprint(tmp_path: Path) -> None:
    """Without the files, the digests the run recorded when detect last ran stand in (then the registry's pin)."""
    run = tmp_path / "run"
    (run / "stats").mkdir(parents=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (run / "stats" / "detect_weights.json").write_text(json.dumps({"yolox_nano": "ab" * 32}))
    found = fingerprint(tmp_path, models=empty)["detectors"]
    assert found["person"]["yolox_nano"]["weights"] == "ab" * 32
    assert found["face"]["retinaface_mnet025"]["weights"] == REGISTRY["retinaface_mnet025"].sha256


@needs_models
def test_resume_re_detects_when_a_constant_changes_and_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    flags = [f"run.dir={run_dir}", "detect.person_tiles=1", "decide.preset=custom", "ingest.num_shards=2"]

    def stored_boxes() -> list[list[float]]:
        parts = sorted((run_dir / "manifest" / "detect").glob("part-*.parquet"))
        import pandas as pd

        frame = pd.concat([pd.read_parquet(p) for p in parts])
        return [list(b) for b in frame["face_retinaface_mnet025_boxes"].dropna()]

    assert run_curate(*flags) == 0
    before = detect_markers(run_dir)
    assert len(before) == 2 and max(len(b) for b in stored_boxes()) > 5  # some image has more than one face
    assert run_curate(*flags, "stage=detect") == 0
    assert detect_markers(run_dir) == before  # nothing changed: every shard kept
    monkeypatch.setattr(detect_stage, "MAX_BOXES", 1)  # the workers are threads of this process: it applies
    assert run_curate(*flags, "stage=detect") == 0
    after = detect_markers(run_dir)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)  # every shard re-ran
    assert max(len(b) for b in stored_boxes()) == 5  # and stored one box per detector and image
    assert run_curate(*flags, "stage=detect") == 0
    assert detect_markers(run_dir) == after  # and is kept from then on


def changed_weights(models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models dir whose RetinaFace checkpoint differs, and the registry pinned to it (else the pin refuses it
    before any work: test_the_weights_file_as_it_is_on_disk_is_in_the_fingerprint). Another dir, so the run's own
    stays as it was (a file replaced in place: test_a_weights_file_replaced_in_place_builds_a_new_detector)."""
    changed = shutil.copytree(models, models.with_name("models-changed"))
    weights = flip_a_byte(changed / REGISTRY["retinaface_mnet025"].filename)
    spec = dataclasses.replace(REGISTRY["retinaface_mnet025"], sha256=sha256_file(weights))
    monkeypatch.setitem(REGISTRY, "retinaface_mnet025", spec)
    return changed


def bumped_version(models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """YOLOX's detector says its outputs changed, as a bump of its `version` does; the same weights."""
    from curate.detect.yolox import YoloxDetector

    monkeypatch.setattr(YoloxDetector, "version", f"{YoloxDetector.version}+1")
    return models


@needs_models
@pytest.mark.parametrize("change", [changed_weights, bumped_version], ids=["weights", "version"])
def test_resume_re_detects_when_the_weights_or_a_version_change_and_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path, pytest.MonkeyPatch], Path]
) -> None:
    run_dir = tmp_path / "run"
    models = copied_models(tmp_path)
    flags = [f"run.dir={run_dir}", "detect.person_tiles=1", "decide.preset=custom", "ingest.num_shards=2"]

    def run(*more: str) -> int:
        return main([*flags, *more, *FAST, f"models.dir={models}"])  # after FAST, whose models.dir it replaces

    assert run() == 0
    before = detect_markers(run_dir)
    assert len(before) == 2
    assert run("stage=detect") == 0
    assert detect_markers(run_dir) == before  # nothing changed: every shard kept
    models = change(models, monkeypatch)  # the workers are threads of this process: it applies
    assert run("stage=detect") == 0
    after = detect_markers(run_dir)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)  # every shard re-ran
    assert run("stage=detect") == 0
    assert detect_markers(run_dir) == after  # and is kept from then on


# ------------------------------------------------------------------------------------ the registry factory


def test_a_model_in_the_wrong_family_is_refused() -> None:
    problems = check_detectors(DetectConfig(face=["retinaface_mnet025"], person=["retinaface_mnet025"]))
    assert len(problems) == 1 and "detect.person lists retinaface_mnet025, a face model" in problems[0]
    assert "belongs in detect.face" in problems[0] and "yolox_nano" in problems[0]  # where, and what fits
    assert "belongs in detect.clip_model" in check_detectors(DetectConfig(face=["open_clip"], person=[]))[0]
    assert "unknown model 'nope'" in check_detectors(DetectConfig(face=["nope"], person=[]))[0]
    assert "twice" in check_detectors(DetectConfig(face=[], person=["yolox_nano", "yolox_nano"]))[0]
    assert check_detectors(DetectConfig()) == []
    # enforced where detectors are built and before detect has any work
    from curate.detect.loaders import person_detectors

    wrong = DetectConfig(face=[], person=["retinaface_mnet025"])
    with pytest.raises(ConfigError, match="a face model"):
        person_detectors(wrong, load_config([]).models, "cpu")
    with pytest.raises(ConfigError, match="a face model"):  # when the config is loaded, before anything else
        load_config(["detect.person=[retinaface_mnet025]"])
    cfg = load_config([])
    cfg.detect.person = ["retinaface_mnet025"]  # a config built in code, not loaded: refused where it would run
    with pytest.raises(ConfigError, match="a face model"):
        DetectStage(cfg).before_work()
    with pytest.raises(ConfigError, match="a face model"):
        registry.check_available(cfg)


def test_tiles_are_refused_for_a_detector_that_cannot_score_them() -> None:
    (problem,) = check_detectors(DetectConfig(person=["fasterrcnn_resnet50_fpn_v2"], person_tiles=3))
    assert "detect.person_tiles=3" in problem and "cannot score tiles" in problem and "person_tiles=1" in problem
    assert "detect.person_tiles_skip" in problem
    assert check_detectors(DetectConfig(person=["fasterrcnn_resnet50_fpn_v2"], person_tiles=1)) == []
    assert check_detectors(DetectConfig(person=["yolox_nano"], person_tiles=3)) == []
    # listed in person_tiles_skip, it scores the full view beside a detector that tiles
    mixed = DetectConfig(
        person=["yolox_nano", "fasterrcnn_resnet50_fpn_v2"], person_tiles_skip=["fasterrcnn_resnet50_fpn_v2"]
    )
    assert check_detectors(mixed) == []


def test_person_tiles_skip_takes_one_detectors_tiles_and_nothing_else(tmp_path: Path) -> None:
    from curate.detect.loaders import identities
    from curate.manifest import detect_columns

    flags = ["detect.person=[yolox_nano,yolox_l]", "detect.person_tiles_skip=[yolox_l]", "decide.preset=custom"]
    cfg = load_config([f"run.dir={tmp_path}", *flags])
    names = [c.name for c in detect_columns(cfg.detect)]
    assert "person_yolox_nano_tiles_max" in names and "person_yolox_l_max" in names
    assert "person_yolox_l_tiles_max" not in names
    found = identities(cfg, {})["person"]
    assert found["yolox_nano"]["params"]["tiles"] == 3 and found["yolox_l"]["params"]["tiles"] == 1
    # what each is built with (the detect stage refuses a built detector whose tiles disagree with the columns)
    assert cfg.detect.seen_by("yolox_l").person_tiles == 1 and cfg.detect.seen_by("yolox_nano").person_tiles == 3
    from curate.detect.loaders import builder_of
    from curate.detect.yolox_network import build_yolox

    checkpoint = tmp_path / "yolox_l.pth"  # random weights: Megvii's checkpoint is not on this machine
    torch.save({"model": build_yolox("l").state_dict()}, checkpoint)
    spec = REGISTRY["yolox_l"]
    built = builder_of(spec)(checkpoint, "cpu", cfg.detect.seen_by("yolox_l"), **spec.params)
    assert built.tiles == 1 and built.identity()["params"] == found["yolox_l"]["params"]
    # a name detect.person does not list is refused before any work, saying which
    with pytest.raises(ConfigError, match=r"person_tiles_skip names yolox_s, which detect\.person does not list"):
        load_config([f"run.dir={tmp_path}", "detect.person_tiles_skip=[yolox_s]"])
    # without it, the fingerprint is as before the key existed (older runs resume without re-detecting)
    plain = DetectStage(load_config([f"run.dir={tmp_path}"])).fingerprint_config()
    assert "person_tiles_skip" not in plain
    assert DetectStage(cfg).fingerprint_config()["person_tiles_skip"] == ["yolox_l"]


def test_the_pass_recipe_runs_the_offline_stack_and_the_stronger_models(tmp_path: Path) -> None:
    cfg = load_config(["pipeline=pass", f"ingest.path={REPO / 'curate' / 'sample_data' / 'yfcc_sample.tsv'}"])
    # its weights are checked before any work, and every missing one is named at once (air-gapped clusters)
    empty = tmp_path / "models"
    empty.mkdir()
    with pytest.raises(registry.ModelMissing) as missing:
        registry.check_available(dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, dir=str(empty))))
    for name in ("retinaface_mnet025", "blazeface_full", "retinaface_r50", "yolox_nano", "yolox_l", "mediapipe_hands"):
        assert f"{name} needs" in str(missing.value)
    assert "7 models are missing" in str(missing.value) and "CLIP ViT-L-14/openai" in str(missing.value)
    assert "Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_l.pth" in str(missing.value)
    assert cfg.detect.face == ["retinaface_mnet025", "blazeface_full", "retinaface_r50"]
    assert cfg.detect.person == ["yolox_nano", "yolox_l"] and cfg.detect.hand == ["mediapipe_hands"]
    assert cfg.detect.clip_model == "ViT-L-14" and check_detectors(cfg) == []
    offline = DetectConfig()  # the default stack, strict's
    assert set(offline.face) <= set(cfg.detect.face) and set(offline.person) <= set(cfg.detect.person)
    assert offline.hand == cfg.detect.hand and offline.person_tiles == cfg.detect.person_tiles


def test_hand_models_belong_in_detect_hand_and_never_tile() -> None:
    problems = check_detectors(DetectConfig(face=["mediapipe_hands"], person=[]))
    assert len(problems) == 1 and "detect.face lists mediapipe_hands, a hand model" in problems[0]
    assert "belongs in detect.hand" in problems[0] and "blazeface_full" in problems[0]
    (problem,) = check_detectors(DetectConfig(person=["mediapipe_hands"], person_tiles=1))
    assert "a hand model: it belongs in detect.hand" in problem
    (problem,) = check_detectors(DetectConfig(hand=["retinaface_mnet025"]))
    assert "detect.hand lists retinaface_mnet025, a face model: it belongs in detect.face" in problem
    assert "mediapipe_hands" in problem  # what fits
    assert "detect.hand lists mediapipe_hands twice" in check_detectors(
        DetectConfig(hand=["mediapipe_hands", "mediapipe_hands"])
    )
    with pytest.raises(ConfigError, match="a hand model"):
        load_config(["detect.person=[mediapipe_hands]"])
    # tiles are the person detectors' (detect.person_tiles): a hand detector takes none, and stores no tiles score
    assert not REGISTRY["mediapipe_hands"].tiles and not REGISTRY["blazeface_full"].tiles
    assert all(spec.kind == "person" for spec in REGISTRY.values() if spec.tiles)
    tiled = DetectConfig(face=["blazeface_full"], hand=["mediapipe_hands"], person_tiles=3)
    assert check_detectors(tiled) == []
    from curate.manifest import detect_columns

    names = [c.name for c in detect_columns(tiled)]
    assert [n for n in names if n.startswith("hand_")] == [
        "hand_mediapipe_hands_max",
        "hand_mediapipe_hands_count",
        "hand_mediapipe_hands_boxes",
    ]
    assert not [n for n in names if n.endswith("_tiles_max") and not n.startswith("person_")]


needs_mediapipe = pytest.mark.skipif(
    not (on_disk("blazeface_full") and on_disk("mediapipe_hands")), reason="needs the MediaPipe weights"
)


@needs_models
@needs_mediapipe
def test_the_mediapipe_detectors_are_in_the_fingerprint(tmp_path: Path) -> None:
    """BlazeFace and the hand detector are fingerprinted like the others; the hand detector's weights are both of
    its files, so a changed landmark model re-runs detect as a changed palm model does. A config without hands
    is fingerprinted as before detect.hand existed."""
    from curate.detect.hands import HandDetector

    plain = fingerprint(tmp_path, "detect.hand=[]", "decide.preset=custom")
    assert "hand" not in plain and "hand" not in plain["detectors"]
    flags = ("detect.face=[retinaface_mnet025,blazeface_full]", "detect.hand=[mediapipe_hands]", "decide.preset=custom")
    base = fingerprint(tmp_path, *flags)
    assert base["hand"] == ["mediapipe_hands"] and base["detectors"]["face"].keys() == {"retinaface_mnet025",
                                                                                          "blazeface_full"}  # fmt: skip
    hands = base["detectors"]["hand"]["mediapipe_hands"]
    pins = [f.sha256 for f in registry.files(REGISTRY["mediapipe_hands"])]
    assert hands["class"] == "curate.detect.hands:HandDetector" and hands["weights"] == "+".join(pins)
    assert base["detectors"]["face"]["blazeface_full"]["weights"] == REGISTRY["blazeface_full"].sha256

    models = tmp_path / "models"
    models.mkdir()
    for name in ("retinaface_mnet025", "yolox_nano", "blazeface_full", "mediapipe_hands"):
        for file in registry.files(REGISTRY[name]):
            shutil.copy(MODELS / file.filename, models)
    assert fingerprint(tmp_path, *flags, models=models) == base
    landmark = models / registry.files(REGISTRY["mediapipe_hands"])[1].filename
    data = bytearray(landmark.read_bytes())
    data[len(data) // 2] ^= 1
    landmark.write_bytes(data)
    changed = fingerprint(tmp_path, *flags, models=models)
    assert changed["detectors"]["hand"]["mediapipe_hands"]["weights"] == f"{pins[0]}+{sha256_file(landmark)}"
    assert changed["detectors"]["face"] == base["detectors"]["face"]
    cfg = load_config([f"run.dir={tmp_path / 'run'}", f"models.dir={models}", *flags])
    with pytest.raises(registry.ModelMissing, match=r"mediapipe_hand_landmark_full\.tflite is pinned"):
        DetectStage(cfg).before_work()  # and the pin refuses it before any work
    # the detector built from those files reports what the fingerprint holds
    built = HandDetector(models / "mediapipe_palm_detection_full.tflite", report_floor=0.1)
    assert built.identity() == changed["detectors"]["hand"]["mediapipe_hands"]


def test_every_registry_entry_builds_through_its_builder() -> None:
    """No name branches: each entry's builder is importable and knows the family's detector."""
    from curate.detect.builder import Builder
    from curate.detect.loaders import builder_of

    for name, spec in REGISTRY.items():
        builder = builder_of(spec)
        assert isinstance(builder, Builder), name
        identity = builder.identity("digest", DetectConfig(clip_model="ViT-B-32"), **spec.params)
        assert identity["weights"] == "digest" and identity["version"], name
        assert "device" not in identity["params"] and "batch_size" not in identity["params"], name


if __name__ == "__main__":
    if sys.argv[1:2] != ["--regenerate"]:
        print(f"usage: {REGENERATE} [NAME ...]", file=sys.stderr)
        sys.exit(2)
    regenerate(sys.argv[2:])


@needs_models
def test_a_weights_file_replaced_in_place_builds_a_new_detector(tmp_path: Path) -> None:
    # a process that runs curate twice (a notebook, a test session) must not keep the detector of a file since
    # replaced: the fingerprint sees the new bytes, so the detector built must be of them too
    from curate.detect.loaders import build

    weights = tmp_path / REGISTRY["retinaface_mnet025"].filename
    shutil.copyfile(MODELS / weights.name, weights)
    first = build("retinaface_mnet025", weights, "cpu", DetectConfig())
    assert build("retinaface_mnet025", weights, "cpu", DetectConfig()) is first  # built once per process
    flip_a_byte(weights)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # mtime resolution can be coarse
    assert build("retinaface_mnet025", weights, "cpu", DetectConfig()) is not first

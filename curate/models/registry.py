"""The model registry: name → family, builder, weights (source, sha256), licence, input size, preprocessing.

It is the factory of the detect stage's detectors, as open_clip's pretrained table is of its models: an entry
names its family (which `detect.*` list it belongs in), its builder (a callable or a `module:function` path,
called as ``builder(weights, device, detect_cfg, **params)``) and the parameters that tell it from the other
entries of that builder. `check_detectors` refuses a configuration that lists a model where it does not belong.

Weights are fetched once into a cache (or read from `models.dir` on air-gapped clusters), verified against the
pinned hash, and never loaded at import time. Some come as members of an archive (the MediaPipe models, of a
pinned PyPI wheel): the archive is downloaded once, checked, and every pinned member of it is taken out (each
checked against its own sha256) under the file name the registry gives it; the archive itself is not kept. An
entry may need more than one file (`ModelSpec.extra`: the hand detector's palm and landmark networks): all of
them are kept side by side, and its weights' digest is theirs joined by "+" (`joined`), the main file's first.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import DETECTOR_FAMILIES, ConfigError, CurateConfig, DetectConfig, ModelsConfig
from curate.io.atomic import sha256_file
from curate.models.errors import ModelMissing  # raised here; defined apart, as curate.models.clip raises it too

log = logging.getLogger("curate")


@dataclass(frozen=True)
class Archive:
    """A download whose members are weight files (a wheel is a zip): fetched once, checked against `sha256`."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class WeightFile:
    """One file of a model's weights: its name in the models folder, its full sha256 (empty: see
    `ModelSpec.sha256`) and, for one taken out of the entry's archive, its path in that archive."""

    filename: str
    sha256: str
    member: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # The family: face and person models are listed in detect.face / detect.person, the clip one is detect.clip_model.
    kind: str
    filename: str
    url: str
    # Full sha256 of the file. torchvision publishes only the first 8 hex digits (in the file name), and
    # checks no more itself; such entries hold that prefix. Empty: no digest is published and none could be taken
    # here (no internet); the digest of the first download is recorded beside the file and checked from then on.
    sha256: str
    licence: str
    input_size: str
    preprocessing: str
    # `builder(weights: Path | None, device: str, detect: DetectConfig, **params) -> Detector`, or its
    # "module:function" path (imported only when a detector is built: the modules import torch). A
    # `curate.detect.builder.Builder` also gives the detector's identity without building it.
    builder: str | Callable[..., Any]
    # What tells this entry from the builder's others (a YOLOX variant, a torchvision architecture); a Builder
    # passes them to the detector's constructor, over what it derives from the detect config.
    params: Mapping[str, Any] = field(default_factory=dict)
    # Whether it scores detect.person_tiles² tiles besides the full view (person_<name>_tiles_max); one that
    # cannot tile is refused when detect.person_tiles > 1 (check_detectors), never run without its tiles.
    tiles: bool = False
    # "package": the weights come with (or through) a pip package, not a file of ours.
    source: str = "url"
    # The weights are members of this archive (`url` is the archive's): `member` is `filename`'s path in it, and
    # every file of the entry is pinned (the archive's sha256 and each member's).
    archive: Archive | None = None
    member: str = ""
    # Further files the detector loads, kept beside `filename` (the builder gets `filename`'s path and finds them
    # there): members of the same archive. The weights' digest is then every file's sha256 joined by "+".
    extra: tuple[WeightFile, ...] = ()


def files(spec: ModelSpec) -> list[WeightFile]:
    """Every file of an entry's weights, its main one (`filename`, the path its builder is given) first."""
    return [WeightFile(spec.filename, spec.sha256, spec.member), *spec.extra]


def joined(digests: list[str]) -> str:
    """The digest of a model's weights from its files' digests, in `files` order: one file's own sha256, several
    joined by "+" (the form `curate.detect.hands.HandDetector.weights_of` reports)."""
    return "+".join(digests)


def pinned(spec: ModelSpec) -> str:
    """The registry's pin of an entry's weights in `joined` form ("" where some file has none)."""
    pins = [f.sha256 for f in files(spec)]
    return joined(pins) if all(pins) else ""


# The MediaPipe models (palm detection, hand landmark, BlazeFace) are members of this wheel; the 1.x wheels no
# longer hold them. Its sha256 is PyPI's (https://pypi.org/pypi/mediapipe/json, release 0.10.21).
MEDIAPIPE_WHEEL = Archive(
    filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    url="https://files.pythonhosted.org/packages/ad/83/56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
)
MEDIAPIPE_LICENCE = "Apache-2.0 (MediaPipe 0.10.21 wheel, its LICENSE)"


# The registry's one CLIP entry: which model and weights is detect.clip_model / clip_pretrained's to say.
CLIP = "open_clip"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="retinaface_mnet025",
            kind="face",
            filename="retinaface_mobilenet0.25_Final.pth",
            url="https://raw.githubusercontent.com/yukimasano/PASS/main/PASSify/face/weights/mobilenet0.25_Final.pth",
            sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
            licence="MIT (PASS; biubug6/Pytorch_Retinaface)",
            input_size="any (PASS: original size)",
            preprocessing="BGR minus (104, 117, 123), no scaling",
            builder="curate.detect.retinaface:build",
        ),
        ModelSpec(
            name="yolox_nano",
            kind="person",
            filename="yolox_nano_coco_416.onnx",
            url="https://raw.githubusercontent.com/hamacom2004jp/iinfer/c7f9a3c5216c6f8b3e8b35886f863dffa2dc0bf9/models/yolox_nano.onnx",
            sha256="d39bee73564e338080378b0ad567fbb40e818b55bbfaf971de82a0267ed16b8a",
            licence="Apache-2.0 (Megvii YOLOX official weights, exported to ONNX)",
            input_size="416 letterbox",
            preprocessing="BGR 0..255, top-left letterbox padded with 114",
            builder="curate.detect.yolox:build",
            params={"variant": "nano"},
            tiles=True,
        ),
        ModelSpec(
            name="retinaface_r50",
            kind="face",
            filename="retinaface.pth",
            # the file the retina-face package (0.0.19) itself downloads for its PyTorch network
            url="https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.pth",
            sha256="",
            licence="MIT (serengil/retinaface; insightface RetinaFace-R50 weights)",
            input_size="short side 1024 (long side at most 1980)",
            preprocessing="RGB 0..255 (the network's first batch norm normalises)",
            builder="curate.detect.retinaface_r50:build",
            source="package",
        ),
        ModelSpec(
            name="fasterrcnn_resnet50_fpn_v2",
            kind="person",
            filename="fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
            url="https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
            sha256="dd69338a",
            licence="BSD-3-Clause (torchvision)",
            input_size="native resolution (no up-scaling)",
            preprocessing="RGB 0..1, ImageNet mean/std inside the model",
            builder="curate.detect.torchvision_person:build",
            params={"arch": "fasterrcnn_resnet50_fpn_v2"},
        ),
        ModelSpec(
            name=CLIP,
            kind="clip",
            # the checkpoint of detect.clip_model / clip_pretrained: curate.models.clip.clip_checkpoint
            filename="clip-<clip_model>-<clip_pretrained>.pt",
            url="open_clip's pretrained table (open_clip.list_pretrained())",
            sha256="",
            licence="per open_clip pretrained tag",
            input_size="the model's (ViT-B-32: 224 centre crop)",
            preprocessing="open_clip's val transform",
            builder="curate.detect.clip_filter:build",
            source="package",
        ),
        ModelSpec(
            name="blazeface_full",
            kind="face",
            filename="mediapipe_face_detection_full_range_sparse.tflite",
            url=MEDIAPIPE_WHEEL.url,
            sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
            licence=MEDIAPIPE_LICENCE,
            input_size="192 letterbox (centred, zero border)",
            preprocessing="RGB scaled to [-1, 1]",
            builder="curate.detect.blazeface:build",
            archive=MEDIAPIPE_WHEEL,
            member="mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        ),
        ModelSpec(
            name="mediapipe_hands",
            kind="hand",
            # the palm detector; the hand landmark network (hand presence on each palm's crop) is kept beside it
            filename="mediapipe_palm_detection_full.tflite",
            url=MEDIAPIPE_WHEEL.url,
            sha256="1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
            licence=MEDIAPIPE_LICENCE,
            input_size="palms: 192 letterbox; hand presence: a 224 rotated crop per palm",
            preprocessing="RGB scaled to [0, 1]",
            builder="curate.detect.hands:build",
            archive=MEDIAPIPE_WHEEL,
            member="mediapipe/modules/palm_detection/palm_detection_full.tflite",
            extra=(
                WeightFile(
                    "mediapipe_hand_landmark_full.tflite",
                    "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3",
                    "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
                ),
            ),
        ),
    ]
}
# Megvii's official YOLOX checkpoints (the PyTorch YOLOX loads them strictly); no digest is published.
# COCO val AP (Megvii's table): tiny 32.8, s 40.5, m 46.9, l 49.7, x 51.1; YOLOX-Nano 25.8.
for _variant, _size in (("tiny", 416), ("s", 640), ("m", 640), ("l", 640), ("x", 640)):
    REGISTRY[f"yolox_{_variant}"] = ModelSpec(
        name=f"yolox_{_variant}",
        kind="person",
        filename=f"yolox_{_variant}.pth",
        url=f"https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_{_variant}.pth",
        sha256="",
        licence="Apache-2.0 (Megvii YOLOX official weights)",
        input_size=f"{_size} letterbox",
        preprocessing=REGISTRY["yolox_nano"].preprocessing,
        builder="curate.detect.yolox:build",
        params={"variant": _variant},
        tiles=True,
    )


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(path))


def recorded_pin(path: Path) -> Path:
    """Where the digest of an unpinned model's first download is kept: beside the file."""
    return path.with_name(path.name + ".sha256")


def verify(spec: ModelSpec, path: Path, record: bool = False, file: WeightFile | None = None) -> None:
    """The file's sha256 against the registry's pin (`file`: which of the entry's files it is, the main one when
    not given); for a file without one (``sha256 == ""``), against the digest recorded at its first download
    (``record``: this is that download, so record it)."""
    file = file or files(spec)[0]
    found = file_digest(path)  # hashed once per version of the file: the fingerprint and the worker ask again
    if file.sha256:
        if not found.startswith(file.sha256):
            raise ModelMissing(
                f"{path} has sha256 {found}, but {spec.name}'s {file.filename} is pinned to {file.sha256}: "
                "remove the file"
            )
        return
    pin = recorded_pin(path.with_name(file.filename))
    if record:
        pin.write_text(found + "\n")
        log.warning("%s has no published sha256: recorded %s in %s, checked from now on", spec.name, found, pin)
    elif not pin.exists():
        raise ModelMissing(
            f"{path}: {spec.name} has no published sha256 and no digest was recorded at download "
            f"({pin.name}); fetch it with `python -m curate.models download`, or write its sha256 to {pin}"
        )
    elif (recorded := pin.read_text().strip()) != found:
        raise ModelMissing(f"{path} has sha256 {found}, but {pin} recorded {recorded}: remove both")


def folder(cfg: ModelsConfig) -> Path:
    """Where the weight files are (models.dir wins over the cache)."""
    return _expand(cfg.dir) if cfg.dir else _expand(cfg.cache)


def locate(spec: ModelSpec, cfg: ModelsConfig) -> Path:
    """Where the main weight file should be (models.dir wins over the cache)."""
    return folder(cfg) / spec.filename


def how_to_get(spec: ModelSpec, cfg: ModelsConfig) -> str:
    names = [f.filename for f in files(spec)]
    where = (
        f"{' and '.join(names)} in {folder(cfg)}: on a machine with internet run "
        "`python -m curate.models download` (same pipeline and overrides) and copy the folder, or fetch "
    )
    if spec.archive is not None:
        members = ", ".join(f"{f.member} as {f.filename} (sha256 {f.sha256})" for f in files(spec))
        archive = f"{spec.archive.url} (sha256 {spec.archive.sha256}, a zip)"
        return f"{spec.name} needs {where}{archive} and take out {members}"
    return f"{spec.name} needs {where}{spec.url} ({f'sha256 {spec.sha256}' if spec.sha256 else 'no published sha256'})"


def resolve(name: str, cfg: ModelsConfig) -> Path:
    """The verified local path of a model's (main) weight file, downloading into the cache when allowed; an entry's
    further files (`ModelSpec.extra`) are then verified beside it."""
    return resolve_all(name, cfg)[0]


def resolve_all(name: str, cfg: ModelsConfig) -> list[Path]:
    """The verified local paths of every file of a model's weights (`files` order), downloading when allowed."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    if spec.kind == "clip":
        raise ConfigError(f"{name}: CLIP weights are detect.clip_model's (curate.models.clip.clip_checkpoint)")
    paths = [folder(cfg) / f.filename for f in files(spec)]
    if not all(path.exists() for path in paths):
        if cfg.dir or not cfg.download:
            raise ModelMissing(how_to_get(spec, cfg))
        if spec.archive is not None:
            extract(spec.archive, folder(cfg), cfg, wanted_by=spec)
        else:
            download(spec, paths[0], cfg)
    for file, path in zip(files(spec), paths, strict=True):
        verify(spec, path, file=file)
    return paths


def weights_digest(name: str, cfg: ModelsConfig) -> str:
    """The digest of a model's weights as they are on disk (verified, downloaded when allowed), `joined`."""
    return joined([file_digest(path) for path in resolve_all(name, cfg)])


def _partial(target: Path) -> Path:
    """A new, unique file beside `target` to write it into before it gets its name: two processes filling one
    cache never write into, or delete, each other's download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    return Path(name)


def _fetch(url: str, partial: Path, advice: str) -> None:
    """`url` into `partial`; a failure leaves nothing behind and says how else to get the file."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise ModelMissing(f"could not download {url}: {err}. {advice}") from err


def download(spec: ModelSpec, path: Path, cfg: ModelsConfig | None = None) -> None:
    where = cfg or ModelsConfig(cache=str(path.parent))  # name the cache the run uses, not the default
    partial = _partial(path)
    _fetch(spec.url, partial, how_to_get(spec, where))
    try:
        verify(spec, partial, record=not spec.sha256)
    except ModelMissing:
        partial.unlink(missing_ok=True)  # a corrupt or substituted file is never left to be mistaken for weights
        raise
    partial.replace(path)


def archive_members(archive: Archive) -> list[tuple[ModelSpec, WeightFile]]:
    """Every file the registry takes out of `archive`, with its entry."""
    return [(spec, f) for spec in REGISTRY.values() if spec.archive == archive for f in files(spec)]


def extract(
    archive: Archive, into: Path, cfg: ModelsConfig | None = None, wanted_by: ModelSpec | None = None
) -> list[Path]:
    """Download `archive` once (checked against its sha256) and take out every member the registry pins from it
    that `into` lacks, each checked against its own sha256 before it gets its name; the archive is then removed.
    A member that fails its pin is refused and left nowhere. Returns the files written. A failure's advice names
    `wanted_by`, the model that asked (else the archive's first)."""
    wanted = list({f.filename: (spec, f) for spec, f in archive_members(archive)}.values())
    wanted = [(spec, f) for spec, f in wanted if not (into / f.filename).exists()]
    if not wanted:
        return []
    where = cfg or ModelsConfig(cache=str(into))
    advice = how_to_get(wanted_by or wanted[0][0], where)
    partial = _partial(into / archive.filename)
    _fetch(archive.url, partial, advice)
    written: list[Path] = []
    members: list[Path] = []  # the members' partial files, removed whatever happens
    try:
        found = sha256_file(partial)
        if found != archive.sha256:
            raise ModelMissing(f"{archive.url} has sha256 {found}, but it is pinned to {archive.sha256}. {advice}")
        with zipfile.ZipFile(partial) as zipped:
            for spec, file in wanted:
                target = into / file.filename
                out = _partial(target)
                members.append(out)
                try:
                    with zipped.open(file.member) as source, open(out, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                    verify(spec, out, file=file)
                except KeyError as err:
                    raise ModelMissing(f"{archive.url} has no member {file.member}. {advice}") from err
                except OSError as err:  # a full disk, a folder not writable: said, never a traceback
                    raise ModelMissing(f"could not write {target}: {err}. {advice}") from err
                out.replace(target)
                written.append(target)
                log.info("%s: %s taken out of %s", spec.name, target, archive.filename)
    except zipfile.BadZipFile as err:
        raise ModelMissing(f"{archive.url} is not a readable zip archive ({err}). {advice}") from err
    finally:
        partial.unlink(missing_ok=True)
        for out in members:  # a missing, damaged or substituted member is never left to be taken for weights
            out.unlink(missing_ok=True)
    return written


def needed(cfg: CurateConfig) -> list[str]:
    """Registry models a config's detect stage will load (CLIP comes through open_clip, see curate.models.clip)."""
    return [name for family in DETECTOR_FAMILIES for name in getattr(cfg.detect, family)]


def check_detectors(cfg: CurateConfig | DetectConfig) -> list[str]:
    """What is wrong with the detectors a config asks for (empty: nothing): unknown names, a model listed in
    another family's list (a face model under detect.person would be scored as a person, a hand model under
    detect.face as a face), a model listed twice, and tiles asked of a person detector that cannot tile. Tiles
    are the person family's (detect.person_tiles): a face or hand detector never takes them, whatever it is."""
    detect = cfg.detect if isinstance(cfg, CurateConfig) else cfg
    problems = []
    for family in DETECTOR_FAMILIES:
        names: list[str] = getattr(detect, family)
        fitting = sorted(n for n, spec in REGISTRY.items() if spec.kind == family)
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"detect.{family} lists {name} twice")
        for name in names:
            spec = REGISTRY.get(name)
            if spec is None:
                problems.append(f"detect.{family}: unknown model {name!r}; {family} models: {', '.join(fitting)}")
            elif spec.kind != family:
                where = "detect.clip_model" if spec.kind == "clip" else f"detect.{spec.kind}"
                problems.append(
                    f"detect.{family} lists {name}, a {spec.kind} model: it belongs in {where} "
                    f"({family} models: {', '.join(fitting)})"
                )
    if detect.person_tiles > 1:
        # (a model of another family is refused above already)
        untiled = [
            n
            for n in detect.person
            if n in REGISTRY
            and REGISTRY[n].kind == "person"
            and not REGISTRY[n].tiles
            and n not in detect.person_tiles_skip
        ]
        if untiled:
            tiling = ", ".join(sorted(n for n, spec in REGISTRY.items() if spec.kind == "person" and spec.tiles))
            problems.append(
                f"detect.person_tiles={detect.person_tiles}, but {', '.join(untiled)} cannot score tiles (those that "
                f"can: {tiling}): list it in detect.person_tiles_skip (full view only), set detect.person_tiles=1, "
                "or choose person detectors that tile"
            )
    return problems


def refuse_bad_detectors(cfg: CurateConfig | DetectConfig) -> None:
    """`check_detectors`'s problems as one ConfigError (nothing: none)."""
    problems = check_detectors(cfg)
    if problems:
        raise ConfigError("detectors:\n  - " + "\n  - ".join(problems))


def check_available(cfg: CurateConfig) -> None:
    """Fail before any work when the detectors are misconfigured or a weight file is missing and cannot be
    fetched (CLIP's checkpoint included: fetched now, the fingerprint then finds it on disk)."""
    refuse_bad_detectors(cfg)
    # Every missing file is named at once: on an air-gapped cluster each round trip to a machine with internet
    # costs a copy of the folder.
    failed: list[ConfigError] = []  # missing, refused by its pin, or not downloaded
    for name in needed(cfg):
        try:
            resolve_all(name, cfg.models)
        except ConfigError as err:
            failed.append(err)
    if cfg.detect.clip_model:
        from curate.models.clip import clip_checkpoint

        try:
            clip_checkpoint(cfg, download=cfg.models.download)
        except ConfigError as err:
            failed.append(err)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise ModelMissing(f"{len(failed)} models are missing:\n  - " + "\n  - ".join(map(str, failed)))


# -- the weights as the detect stage's fingerprint knows them -------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a weight file, hashed once per version of it (path, mtime, size): the fingerprint asks for it per
    shard, and a worker per detector it builds."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def absent(what: str) -> str:
    """The digest of weights that are not on this machine and whose digest is known nowhere: matches no file."""
    return f"absent: {what}"


def known_digest(name: str, cfg: ModelsConfig, recorded: Mapping[str, str]) -> str:
    """The sha256 of a registry model's weights (`joined`, for one of several files) without downloading or
    loading them: the files' own when they are on disk, else the digest this run recorded when its detect last
    ran (`recorded`, so that a finished run needs no weights), else the registry's full pins, else `absent`.
    Never verified here: a file that fails its pin is refused before any work (`resolve`)."""
    spec = REGISTRY[name]
    paths = [folder(cfg) / f.filename for f in files(spec)]
    if all(path.is_file() for path in paths):
        return joined([file_digest(path) for path in paths])
    if name in recorded:
        return recorded[name]
    full = all(len(f.sha256) == 64 for f in files(spec))
    return pinned(spec) if full else absent(spec.filename)

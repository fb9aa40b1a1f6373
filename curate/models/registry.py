"""The model registry: name → family, builder, weights (source, sha256), licence, input size, preprocessing.

It is the factory of the detect stage's detectors, as open_clip's pretrained table is of its models: an entry
names its family (which `detect.*` list it belongs in), its builder (a callable or a `module:function` path,
called as ``builder(weights, device, detect_cfg, **params)``) and the parameters that tell it from the other
entries of that builder. `check_detectors` refuses a configuration that lists a model where it does not belong.

Weights are fetched once into a cache (or read from `models.dir` on air-gapped clusters), verified against the
pinned hash, and never loaded at import time.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import ConfigError, CurateConfig, DetectConfig, ModelsConfig
from curate.io.atomic import sha256_file
from curate.models.errors import ModelMissing  # raised here; defined apart, as curate.models.clip raises it too

log = logging.getLogger("curate")


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
    ]
}
# Megvii's official YOLOX checkpoints (the PyTorch YOLOX loads them strictly); no digest is published.
for _variant, _size in (("tiny", 416), ("s", 640), ("m", 640)):
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


def verify(spec: ModelSpec, path: Path, record: bool = False) -> None:
    """The file's sha256 against the registry's pin; for a model without one (``sha256 == ""``), against the
    digest recorded at its first download (``record``: this is that download, so record it)."""
    found = file_digest(path)  # hashed once per version of the file: the fingerprint and the worker ask again
    if spec.sha256:
        if not found.startswith(spec.sha256):
            raise ModelMissing(
                f"{path} has sha256 {found}, but {spec.name} is pinned to {spec.sha256}: remove the file"
            )
        return
    pin = recorded_pin(path.with_name(spec.filename))
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


def locate(spec: ModelSpec, cfg: ModelsConfig) -> Path:
    """Where the weight file should be (models.dir wins over the cache)."""
    return (_expand(cfg.dir) if cfg.dir else _expand(cfg.cache)) / spec.filename


def how_to_get(spec: ModelSpec, cfg: ModelsConfig) -> str:
    return (
        f"{spec.name} needs {spec.filename} in {locate(spec, cfg).parent}: on a machine with internet run "
        f"`python -m curate.models download` (same pipeline and overrides) and copy the folder, "
        f"or fetch {spec.url} ({f'sha256 {spec.sha256}' if spec.sha256 else 'no published sha256'})"
    )


def resolve(name: str, cfg: ModelsConfig) -> Path:
    """The verified local path of a model's weights, downloading into the cache when allowed."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    if spec.kind == "clip":
        raise ConfigError(f"{name}: CLIP weights are detect.clip_model's (curate.models.clip.clip_checkpoint)")
    path = locate(spec, cfg)
    if not path.exists():
        if cfg.dir or not cfg.download:
            raise ModelMissing(how_to_get(spec, cfg))
        download(spec, path, cfg)
    verify(spec, path)
    return path


def download(spec: ModelSpec, path: Path, cfg: ModelsConfig | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except OSError as err:
        partial.unlink(missing_ok=True)
        where = cfg or ModelsConfig(cache=str(path.parent))  # name the cache the run uses, not the default
        raise ModelMissing(f"could not download {spec.url}: {err}. {how_to_get(spec, where)}") from err
    try:
        verify(spec, partial, record=not spec.sha256)
    except ModelMissing:
        partial.unlink(missing_ok=True)  # a corrupt or substituted file is never left to be mistaken for weights
        raise
    partial.replace(path)


def needed(cfg: CurateConfig) -> list[str]:
    """Registry models a config's detect stage will load (CLIP comes through open_clip, see curate.models.clip)."""
    return [*cfg.detect.face, *cfg.detect.person]


def check_detectors(cfg: CurateConfig | DetectConfig) -> list[str]:
    """What is wrong with the detectors a config asks for (empty: nothing): unknown names, a model listed in
    another family's list (a face model under detect.person would be scored as a person), a model listed twice,
    and tiles asked of a person detector that cannot tile."""
    detect = cfg.detect if isinstance(cfg, CurateConfig) else cfg
    problems = []
    for family in ("face", "person"):
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
        untiled = [n for n in detect.person if n in REGISTRY and REGISTRY[n].kind == "person" and not REGISTRY[n].tiles]
        if untiled:
            tiling = ", ".join(sorted(n for n, spec in REGISTRY.items() if spec.kind == "person" and spec.tiles))
            problems.append(
                f"detect.person_tiles={detect.person_tiles}, but {', '.join(untiled)} cannot score tiles (those that "
                f"can: {tiling}): set detect.person_tiles=1, or choose person detectors that tile"
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
    for name in needed(cfg):
        resolve(name, cfg.models)
    if cfg.detect.clip_model:
        from curate.models.clip import clip_checkpoint

        clip_checkpoint(cfg, download=cfg.models.download)


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
    """The sha256 of a registry model's weights without downloading or loading them: the file's own when it is
    on disk, else the digest this run recorded when its detect last ran (`recorded`, so that a finished run needs
    no weights), else the registry's full pin, else `absent`. Never verified here: a file that fails its pin is
    refused before any work (`resolve`)."""
    spec = REGISTRY[name]
    path = locate(spec, cfg)
    if path.is_file():
        return file_digest(path)
    if name in recorded:
        return recorded[name]
    return spec.sha256 if len(spec.sha256) == 64 else absent(spec.filename)

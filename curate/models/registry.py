"""The pinned model registry: name → source, sha256, licence, input size, preprocessing.

Weights are fetched once into a cache (or read from `models.dir` on air-gapped clusters), verified against the
pinned hash, and never loaded at import time.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from curate.config import ConfigError, CurateConfig, ModelsConfig
from curate.io.atomic import sha256_file

log = logging.getLogger("curate")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # face | person | clip
    filename: str
    url: str
    # Full sha256 of the file. torchvision publishes only the first 8 hex digits (in the file name), and
    # checks no more itself; such entries hold that prefix. Empty: no digest is published and none could be taken
    # here (no internet); the digest of the first download is recorded beside the file and checked from then on.
    sha256: str
    licence: str
    input_size: str
    preprocessing: str
    # "package": the weights come with (or through) a pip package, not a file of ours.
    source: str = "url"


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
    )


class ModelMissing(ConfigError):
    """A weight file is not available; the message names the file and how to get it."""


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(path))


def recorded_pin(path: Path) -> Path:
    """Where the digest of an unpinned model's first download is kept: beside the file."""
    return path.with_name(path.name + ".sha256")


def verify(spec: ModelSpec, path: Path, record: bool = False) -> None:
    """The file's sha256 against the registry's pin; for a model without one (``sha256 == ""``), against the
    digest recorded at its first download (``record``: this is that download, so record it)."""
    found = sha256_file(path)
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
    """Registry models a config's detect stage will load (CLIP comes through open_clip, see clip_weights)."""
    return [*cfg.detect.face, *cfg.detect.person]


def check_available(cfg: CurateConfig) -> None:
    """Fail before any work when a weight file is missing and cannot be fetched."""
    for name in needed(cfg):
        resolve(name, cfg.models)

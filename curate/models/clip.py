"""The CLIP checkpoint of `detect.clip_model` / `detect.clip_pretrained`: a file in `models.dir`, or open_clip's
own download (its pretrained table says where from), kept in `models.cache`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curate.config import ConfigError, CurateConfig
from curate.models.errors import ModelMissing


def models_dir_checkpoint(cfg: CurateConfig) -> Path:
    """Where models.dir holds the checkpoint: clip-<model>-<tag>.pt."""
    model, tag = cfg.detect.clip_model, cfg.detect.clip_pretrained
    return Path(os.path.expanduser(cfg.models.dir)) / f"clip-{model}-{tag}.pt"


def _pretrained(cfg: CurateConfig) -> dict[str, Any]:
    import open_clip

    model, tag = cfg.detect.clip_model, cfg.detect.clip_pretrained
    pretrained: dict[str, Any] = open_clip.get_pretrained_cfg(model, tag)
    if not pretrained:
        raise ConfigError(f"open_clip has no pretrained tag {tag!r} for {model!r}: see open_clip.list_pretrained()")
    return pretrained


def clip_checkpoint(cfg: CurateConfig, download: bool) -> str:
    """A local CLIP checkpoint: models.dir/clip-<model>-<tag>.pt, or open_clip's sha-checked download."""
    model, tag = cfg.detect.clip_model, cfg.detect.clip_pretrained
    if cfg.models.dir:
        path = models_dir_checkpoint(cfg)
        if not path.exists():
            raise ModelMissing(
                f"CLIP {model}/{tag} needs {path.name} in models.dir={cfg.models.dir}: run "
                "`python -m curate.models download` on a machine with internet and copy the file"
            )
        return str(path)
    import open_clip

    pretrained = _pretrained(cfg)
    if not download:
        raise ModelMissing(f"CLIP {model}/{tag} is not cached and models.download=false")
    cache = os.path.expanduser(cfg.models.cache)
    path = open_clip.download_pretrained(pretrained, cache_dir=cache)
    if not path:
        raise ModelMissing(f"could not download CLIP {model}/{tag}")
    return str(path)


def clip_on_disk(cfg: CurateConfig) -> Path | None:
    """The checkpoint `clip_checkpoint` would return, when it is on disk already; found without the network and
    never raising (None: not there, or not found this way), for the fingerprint. For open_clip's cache this
    repeats open_clip's lookup: from the Hugging Face hub (a .safetensors copy first), else by URL into the cache
    folder by the URL's file name."""
    if cfg.models.dir:
        path = models_dir_checkpoint(cfg)
        return path if path.is_file() else None
    try:
        pretrained = _pretrained(cfg)
    except ConfigError:
        return None
    if "file" in pretrained:
        return Path(pretrained["file"])
    cache = os.path.expanduser(cfg.models.cache)
    hub = pretrained.get("hf_hub", "")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # open_clip then downloads by URL too
        hub = ""
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        safe = {"open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(filename)
        if safe is None and filename.endswith((".bin", ".pth")):
            safe = filename[:-4] + ".safetensors"
        for name in (safe, filename):
            found = try_to_load_from_cache(repo, name, cache_dir=cache) if name else None
            if isinstance(found, str):
                return Path(found)
        return None
    url = pretrained.get("url", "")
    path = Path(cache) / os.path.basename(url)
    return path if url and path.is_file() else None

"""`python -m curate.models download [pipeline=NAME] [overrides…]`: fetch every weight a recipe needs.

Run it on a machine with internet, then copy the folder (`models.dir=…`) to an air-gapped cluster.
"""

from __future__ import annotations

import sys

from curate.config import ConfigError
from curate.configload import load_config
from curate.models.registry import REGISTRY, files, needed, pinned, resolve_all


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("download", "list"):
        print("usage: python -m curate.models download|list [pipeline=NAME] [key=value …]", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for spec in REGISTRY.values():
            pin = pinned(spec)[:12] if spec.sha256 else "(open_clip)" if spec.kind == "clip" else "(recorded)"
            names = " + ".join(f.filename for f in files(spec))  # a model of several files names each
            print(f"{spec.name:<28} {spec.kind:<7} {names:<48} {pin:<12} {spec.licence}")
        return 0
    try:
        cfg = load_config(argv[1:])
        for name in needed(cfg):
            print(f"{name}: {', '.join(str(path) for path in resolve_all(name, cfg.models))}")
        if cfg.detect.clip_model:
            from curate.models.clip import clip_checkpoint

            print(f"clip {cfg.detect.clip_model}/{cfg.detect.clip_pretrained}: {clip_checkpoint(cfg, download=True)}")
    except ConfigError as err:
        print(f"curate.models: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

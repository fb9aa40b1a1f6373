"""`python -m curate.models download [pipeline=NAME] [overrides…]`: fetch every weight a recipe needs.

Run it on a machine with internet, then copy the folder (`models.dir=…`) to an air-gapped cluster.
"""

from __future__ import annotations

import sys

from curate.config import ConfigError
from curate.configload import load_config
from curate.models.registry import REGISTRY, resolve


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("download", "list"):
        print("usage: python -m curate.models download|list [pipeline=NAME] [key=value …]", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for spec in REGISTRY.values():
            pin = spec.sha256[:12] if spec.sha256 else "(open_clip)" if spec.kind == "clip" else "(recorded)"
            print(f"{spec.name:<28} {spec.kind:<7} {spec.filename:<48} {pin:<12} {spec.licence}")
        return 0
    try:
        cfg = load_config(argv[1:])
        for name in [*cfg.detect.face, *cfg.detect.person]:
            print(f"{name}: {resolve(name, cfg.models)}")
        if cfg.detect.clip_model:
            from curate.models.clip import clip_checkpoint

            print(f"clip {cfg.detect.clip_model}/{cfg.detect.clip_pretrained}: {clip_checkpoint(cfg, download=True)}")
    except ConfigError as err:
        print(f"curate.models: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

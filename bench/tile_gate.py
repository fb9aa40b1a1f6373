"""What `detect.tile_policy=auto` costs in decisions, for every setting of its two knobs, from one look at a
labelled set: recall, false removals and review load at a preset, and tiles looked per image.

    .venv/bin/python bench/tile_gate.py --models-dir ../shared/models --images ../shared/evalsets/dev \
        [--labels LABELS.csv] [--preset strict] [--gates 0,0.001,...] [--decisive 0.5,0.6,0.7,...]

Every model's full view is scored once (the Scorer without tiles), and each tile of YOLOX's grid once, on its
own, with the full view's peak score inside that tile (what `detect.tile_gate` is compared with). `auto` at
(gate, decisive) is then replayed from those stored values exactly as the detect stage does it: an image whose
first face, person or hand score reaches `decisive` gets no tiles (and `*_tiles_decided_by`), the others look
at the tiles whose peak reaches `gate`, and the tiles' score is the best of the tiles looked at. `always` is
every tile. Decisions come from `curate.detect.decide` with the preset, as `curate.evaluate` makes them.

Settings picked on the set they are measured on are optimistic: the table says how the figures move, not what
they will be elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from curate.config import DecideConfig
from curate.configload import load_config
from curate.detect.decide import decide, rule
from curate.detect.decoding import decode
from curate.detect.loaders import build
from curate.detect.yolox import FullViews, YoloxDetector
from curate.evaluate import read_labels
from curate.models.registry import resolve
from curate.stages.detect import Scorer

TILED = "person_yolox_nano"  # the default stack's tiling detector
FULL_FAMILIES = ("face_", "person_", "hand_")  # the columns that may decide an image (Scorer.decided_by's order)


def full_view_scores(cfg_overrides: list[str], images: list[np.ndarray], batch: int) -> pd.DataFrame:
    """Every model's full-view best score per image (the Scorer with tiles off)."""
    scorer = Scorer(load_config([*cfg_overrides, "detect.tile_policy=off"]))
    columns: dict[str, list[float]] = {}
    for start in range(0, len(images), batch):
        for key, values in scorer.score(images[start : start + batch]).items():
            if key.endswith("_max"):
                columns.setdefault(key, []).extend(values)
    return pd.DataFrame(columns)


def tile_scores(cfg_overrides: list[str], images: list[np.ndarray], batch: int) -> tuple[list[list[float]], ...]:
    """Per image, per tile window: the full view's peak person score inside it, and the tile's own best score."""
    cfg = load_config([*cfg_overrides, "detect.tile_policy=auto", "detect.tile_gate=0"])
    detector = build("yolox_nano", resolve("yolox_nano", cfg.models), "cpu", cfg.detect)
    assert isinstance(detector, YoloxDetector) and detector.tiles > 1
    peaks: list[list[float]] = []
    bests: list[list[float]] = []
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        views: FullViews = detector.submit_views(part)()
        per_tile = [[float("nan")] * len(w) for w in views.windows]
        for k in range(max((len(w) for w in views.windows), default=0)):
            # only window k of each image passes the gate (0): that tile's best score alone
            only_k = [[1.0 if j == k else -1.0 for j in range(len(w))] for w in views.windows]
            found = detector.submit_tiles(dataclasses.replace(views, peaks=only_k), [False] * len(part))()
            for i, detections in enumerate(found):
                if k < len(views.windows[i]):
                    per_tile[i][k] = float(detections.tiles_best or 0.0)
        peaks += views.peaks
        bests += per_tile
    return peaks, bests


def replay(
    full: pd.DataFrame, peaks: list[list[float]], bests: list[list[float]], gate: float | None, decisive: float | None
) -> pd.DataFrame:
    """The score columns `auto` at (gate, decisive) would store; gate None = always (every tile, none decided)."""
    deciding = [c for prefix in FULL_FAMILIES for c in full.columns if c.startswith(prefix) and "_tiles" not in c]
    tiles_max, looked, decided_by = [], [], []
    for i in range(len(full)):
        by = None
        if gate is not None and decisive is not None and peaks[i]:
            by = next((c for c in deciding if full.at[i, c] >= decisive), None)
        chosen = [] if by else [b for p, b in zip(peaks[i], bests[i], strict=True) if gate is None or p >= gate]
        tiles_max.append(max(chosen) if chosen else np.nan)
        looked.append(len(chosen))
        decided_by.append(by)
    return full.assign(
        **{f"{TILED}_tiles_max": tiles_max, f"{TILED}_tiles_looked": looked, f"{TILED}_tiles_decided_by": decided_by}
    )


def figures(scored: pd.DataFrame, labels: pd.DataFrame, preset: str) -> dict[str, float]:
    active = rule(DecideConfig(preset), [c for c in scored.columns if c.endswith("_max")])
    decision, _ = decide(scored, active)
    human = (labels["label"] == "human").to_numpy()
    removed, rejected = decision != "keep", decision == "reject"
    return {
        "caught": int(removed[human].sum()),
        "false_removed": int(rejected[~human].sum()),
        "review": int((decision == "review").sum()),
        "tiles_per_image": float(scored[f"{TILED}_tiles_looked"].mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, help="default: labels.csv in --images")
    parser.add_argument("--preset", default="strict")
    parser.add_argument("--gates", default="0,0.001,0.003,0.01,0.02,0.05,0.1")
    parser.add_argument("--decisive", default="0.5,0.6,0.7,0.8,0.9,1.01")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    labels = read_labels(args.labels or args.images / "labels.csv")
    images = [decode((args.images / name).read_bytes()) for name in labels["file"]]
    # the Scorer's config: the default stack; custom, since tiles off is not strict's setting (decided below)
    overrides = [f"models.dir={args.models_dir}", "decide.preset=custom", "detect.device=cpu"]
    started = time.perf_counter()
    full = full_view_scores(overrides, images, args.batch)
    peaks, bests = tile_scores(overrides, images, args.batch)
    print(f"{len(images)} images ({int((labels['label'] == 'human').sum())} human) from {args.images}, "
          f"scored in {time.perf_counter() - started:.0f} s; preset {args.preset}", file=sys.stderr)  # fmt: skip
    n_human, n_other = int((labels["label"] == "human").sum()), int((labels["label"] != "human").sum())
    always = figures(replay(full, peaks, bests, None, None), labels, args.preset)
    print(f"{'policy':<8} {'gate':>6} {'decisive':>8} {'caught':>8} {'false rem.':>10} {'review':>7} {'tiles/img':>9}")

    def line(policy: str, gate: str, decisive: str, found: dict[str, float]) -> None:
        caught, wrong = f"{found['caught']}/{n_human}", f"{found['false_removed']}/{n_other}"
        print(f"{policy:<8} {gate:>6} {decisive:>8} {caught:>8} {wrong:>10} {found['review']:>7} "
              f"{found['tiles_per_image']:>9.2f}")  # fmt: skip

    line("always", "-", "-", always)
    for decisive in (float(v) for v in args.decisive.split(",")):
        for gate in (float(v) for v in args.gates.split(",")):
            line(
                "auto",
                f"{gate:g}",
                f"{decisive:g}",
                figures(replay(full, peaks, bests, gate, decisive), labels, args.preset),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Detect benchmark: images/s per detector and for the full stack, batched vs the PASS approach, in one run.

    .venv/bin/python bench/detect.py --models-dir ../shared/models [--images DIR] [--n 64] [--device cpu|cuda]

The PASS approach is one image at a time at the original size (PASSify ran RetinaFace that way, 4–6 images/s
per job). Both modes see the same decoded images; JPEG decoding is timed separately. Peak RSS is this
process's maximum resident set (ru_maxrss), after all modes ran.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from curate.detect.loaders import pick_device
from curate.run import SAMPLE_DIR, load_config
from curate.stages.detect import Scorer, decode


def load_images(folder: Path, n: int) -> tuple[list[np.ndarray], float]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    started = time.perf_counter()
    images = [decode(p.read_bytes()) for p in files]
    return images, len(images) / (time.perf_counter() - started)


def rate(run: Callable[[Sequence[np.ndarray]], object], images: list[np.ndarray], batch: int) -> float:
    run(images[:2])  # warm-up: first-call allocations and lazy initialisation are not what we measure
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        run(images[start : start + batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--images", type=Path, default=SAMPLE_DIR / "images")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(
        [
            f"models.dir={args.models_dir}",
            f"detect.device={args.device}",
            f"detect.batch_size={args.batch}",
            f"detect.torch_threads={args.threads}",
        ]
    )
    images, decode_rate = load_images(args.images, args.n)
    scorer = Scorer(cfg)
    sizes = np.array([im.shape[0] * im.shape[1] for im in images]) / 1e6
    device = pick_device(args.device)
    print(f"{len(images)} images from {args.images}, median {np.median(sizes):.2f} MP; device {device}; "
          f"torch threads {args.threads}; JPEG decode (PIL, 1 thread) {decode_rate:.1f} img/s")  # fmt: skip
    print(f"{'detector':<28} {'batched img/s':>14} {'one-at-a-time':>14} {'ratio':>7}")
    for family, names, detectors in scorer.families:
        for name, detector in zip(names, detectors, strict=True):
            batched = rate(detector.detect, images, args.batch)
            single = rate(detector.detect, images, 1)
            print(f"{family + ':' + name:<28} {batched:>14.1f} {single:>14.1f} {batched / single:>7.2f}")
    stack = rate(scorer.score, images, args.batch)
    pass_way = rate(scorer.score, images, 1)
    print(f"{'full stack (Scorer)':<28} {stack:>14.1f} {pass_way:>14.1f} {stack / pass_way:>7.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU vs CPU agreement of the detect path: the bundled sample's JPEGs scored on the CPU (PIL decode, float32) and
on CUDA (nvJPEG decode, float16), with the largest score differences and the decisions that differ.

    python bench/gpu_agreement.py --models-dir DIR
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from curate.configload import load_config
from curate.detect.decide import decide
from curate.detect.decoding import decode, decode_batch
from curate.runconfig import SAMPLE_DIR
from curate.stages.detect import Scorer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", required=True)
    args = parser.parse_args()
    blobs = [p.read_bytes() for p in sorted((SAMPLE_DIR / "images").iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    scores = {}
    for device in ("cpu", "cuda"):
        cfg = load_config([f"models.dir={args.models_dir}", f"detect.device={device}", "detect.batch_size=16"])
        images = [decode(b) for b in blobs] if device == "cpu" else decode_batch(blobs, "cuda")[0]
        scores[device] = Scorer(cfg).score(images)
    columns = [c for c in scores["cpu"] if c.endswith("_max")]
    print(f"{len(blobs)} sample images; CPU float32 + PIL vs CUDA float16 + nvJPEG")
    for column in columns:
        a, b = np.array(scores["cpu"][column], float), np.array(scores["cuda"][column], float)
        print(f"{column:<32} max |diff| {np.abs(a - b).max():.4f}  mean |diff| {np.abs(a - b).mean():.4f}")
    cfg = load_config([f"models.dir={args.models_dir}"])
    decisions = {
        device: decide(pd.DataFrame({c: scores[device][c] for c in columns}), cfg.decide)[0] for device in scores
    }
    differ = int((decisions["cpu"] != decisions["cuda"]).sum())
    print(f"decisions that differ under the default preset: {differ} of {len(blobs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

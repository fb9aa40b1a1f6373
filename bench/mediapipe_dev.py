"""The MediaPipe detectors on the labelled dev set: images flagged per rule, and ms/image.

    .venv/bin/python bench/mediapipe_dev.py [--dev ../shared/evalsets/dev] [--models-dir ../shared/models]
        [--device cpu|cuda] [--threads 1] [--batch-size 8] [--litert]

Rules (those of ``README-mediapipe.md`` beside the models): the hand pipeline (`curate.detect.hands`) with palm
floors 0.1 and 0.5, an image flagged when a crop's hand presence is >= 0.5; the palm detector alone, flagged at a
palm score >= 0.8; BlazeFace full range (`curate.detect.blazeface`), flagged at a top score >= 0.6 and >= 0.594.
Recall = human images flagged, false removals = no_human images flagged; "misses" are the five human images that
RetinaFace + YOLOX (strict preset) do not flag. Images are decoded first; the timings are of ``detect`` alone
(the palm detector alone: its network and decoding). ``--litert`` also times the TFLite runtime (XNNPACK, one
image at a time) on the same inputs, for comparison.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image

from curate.detect.blazeface import FULL_RANGE, INPUT_RANGE, BlazeFaceDetector, to_range
from curate.detect.hands import PALM, HandDetector
from curate.detect.mediapipe_crops import letterbox_batch
from curate.detect.mediapipe_ssd import decode

ROOT = Path(__file__).resolve().parents[1]
MISSES = ["dn_scream", "fst_la_muse", "fst_rain_princess", "mmp_freihand_00032915", "dps_in21"]


def load(dev: Path) -> tuple[list[str], list[str], list[str], list[np.ndarray]]:
    with open(dev / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = []
    for row in rows:
        with Image.open(dev / row["file"]) as image:
            images.append(np.asarray(image.convert("RGB")))
    names = [Path(r["file"]).stem for r in rows]
    return names, [r["label"] for r in rows], [r["category"] for r in rows], images


def best_scores(detector: HandDetector | BlazeFaceDetector, images: Sequence[np.ndarray]) -> list[float]:
    return [d.max_score for d in detector.detect(images)]


def timed(run: Callable[[], list[float]], count: int) -> tuple[list[float], float]:
    """Scores and ms per image of one ``run`` (after a warm-up on the same images)."""
    run()
    start = time.perf_counter()
    scores = run()
    return scores, (time.perf_counter() - start) * 1000 / count


def report(
    rule: str, scores: Sequence[float], bar: float, ms: float, names: Sequence[str], labels: Sequence[str]
) -> None:
    flagged = [s >= bar for s in scores]
    human = sum(f for f, label in zip(flagged, labels, strict=True) if label == "human")
    false = sum(f for f, label in zip(flagged, labels, strict=True) if label != "human")
    caught = [n for n, f in zip(names, flagged, strict=True) if f and n in MISSES]
    total_human = sum(label == "human" for label in labels)
    print(
        f"| {rule} | {human}/{total_human} | {false}/{len(labels) - total_human} | {', '.join(caught) or '-'} | "
        f"{ms:.1f} |"
    )


def litert_ms(path: Path, inputs: np.ndarray, threads: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(index, inputs[:1])
    interpreter.invoke()
    start = time.perf_counter()
    for x in inputs:
        interpreter.set_tensor(index, x[None])
        interpreter.invoke()
    return (time.perf_counter() - start) * 1000 / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "evalsets" / "dev")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--litert", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names, labels, categories, images = load(args.dev)
    n = len(images)
    palm_file = args.models_dir / "mediapipe_palm_detection_full.tflite"
    face_file = args.models_dir / "mediapipe_face_detection_full_range_sparse.tflite"
    print(f"{n} images, device {args.device}, {args.threads} thread(s), batch {args.batch_size}\n")
    print("| model and rule | recall | false removals | misses it catches | ms/image |")
    print("|---|---|---|---|---|")
    hand_scores: list[float] = []
    for floor in (0.1, 0.5):
        hands = HandDetector(palm_file, device=args.device, palm_floor=floor, batch_size=args.batch_size)
        scores, ms = timed(partial(best_scores, hands, images), n)
        report(f"hand pipeline: palm score >= {floor}, then hand presence >= 0.5", scores, 0.5, ms, names, labels)
        hand_scores = hand_scores or scores

    def palm_alone() -> list[float]:
        best: list[float] = []
        for start in range(0, n, args.batch_size):
            batch, _ = letterbox_batch(images[start : start + args.batch_size], PALM.input_size, hands.device)
            raw = hands.palm_outputs(batch / 255.0)
            best.extend(decode(*raw, hands.centres, PALM)[2].amax(dim=1).tolist())
        return best

    scores, ms = timed(palm_alone, n)
    report("palm detector alone, score >= 0.8", scores, 0.8, ms, names, labels)
    faces = BlazeFaceDetector(face_file, device=args.device, batch_size=args.batch_size)
    scores, ms = timed(partial(best_scores, faces, images), n)
    for bar in (0.6, 0.594):
        report(f"BlazeFace full range, score >= {bar}", scores, bar, ms, names, labels)
    parts = [c for c, s, label in zip(categories, hand_scores, labels, strict=True) if s >= 0.5 and label == "human"]
    body = sum(c == "body_part" for c in parts)
    print(f"\nhand pipeline (palm >= 0.1): {body} of {categories.count('body_part')} body_part images flagged")
    if args.litert:
        face_in, _ = letterbox_batch(images, FULL_RANGE.input_size, torch.device("cpu"))
        palm_in, _ = letterbox_batch(images, PALM.input_size, torch.device("cpu"))
        nhwc = {
            "BlazeFace full range": (face_file, to_range(face_in, *INPUT_RANGE)),
            "palm detection": (palm_file, palm_in / 255.0),
        }
        for what, (path, x) in nhwc.items():
            ms = litert_ms(path, x.permute(0, 2, 3, 1).contiguous().numpy(), args.threads)
            print(f"TFLite runtime, {what}: {ms:.1f} ms/image (network only)")


if __name__ == "__main__":
    main()

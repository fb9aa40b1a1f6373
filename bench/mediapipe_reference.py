"""Write what MediaPipe itself finds on the dev set: `tests/golden/mediapipe_0.10.21_dev.json`, which
`tests/test_mediapipe_reference.py` holds `curate.detect.blazeface` and `curate.detect.hands` to.

MediaPipe is not a dependency of curate (and its 0.10.21 wheel wants numpy < 2), so this runs in a virtual
environment of its own:

    python3.11 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21
    /tmp/mpvenv/bin/python bench/mediapipe_reference.py [--dev ../shared/evalsets/dev] [--out tests/golden/...]

Images are read with OpenCV (as MediaPipe's examples do) and converted to RGB.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import mediapipe as mp

ROOT = Path(__file__).resolve().parents[1]
FLOORS = (0.1, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "evalsets" / "dev")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden" / "mediapipe_0.10.21_dev.json")
    args = parser.parse_args()
    with open(args.dev / "labels.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    faces = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.01)
    hands = {
        floor: mp.solutions.hands.Hands(
            static_image_mode=True, max_num_hands=10, model_complexity=1, min_detection_confidence=floor
        )
        for floor in FLOORS
    }
    face_top: dict[str, float] = {}
    flagged: dict[str, list[str]] = {str(floor): [] for floor in FLOORS}
    for file in files:
        name = Path(file).name
        bgr = cv2.imread(str(args.dev / file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read {args.dev / file}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        detections = faces.process(image).detections or []
        top = max((d.score[0] for d in detections), default=0.0)
        if top >= 0.01:
            face_top[name] = round(float(top), 5)
        for floor, solution in hands.items():
            if solution.process(image).multi_hand_landmarks:
                flagged[str(floor)].append(name)
    golden = {
        "source": f"MediaPipe {mp.__version__} (PyPI wheel, Python solutions API, CPU) on the dev set's images, "
        "read by OpenCV and converted to RGB: bench/mediapipe_reference.py",
        "face_detection": "mp.solutions.face_detection.FaceDetection(model_selection=1, "
        "min_detection_confidence=0.01): each image's top detection score; the full-range graph keeps its own "
        "min_score_thresh 0.6, so images with no face >= 0.6 are left out",
        "hands": "mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=10, model_complexity=1, "
        "min_detection_confidence=F): images with at least one hand (hand presence >= 0.5), per palm floor F",
        "face_top_score": dict(sorted(face_top.items())),
        "hands_flagged": {floor: sorted(names) for floor, names in flagged.items()},
    }
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"{len(files)} images: {len(face_top)} with a face, hands {[len(v) for v in flagged.values()]} -> {args.out}")


if __name__ == "__main__":
    main()

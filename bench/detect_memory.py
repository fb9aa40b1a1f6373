"""Peak memory of one detect worker on the CPU: a shard of huge photos, and a shard of many small ones.

    .venv/bin/python bench/detect_memory.py [--models-dir ../shared/models] [--big 3] [--small 2000]
        [--before] [--tar-only 10000] [--work DIR] [--keep]

Each case is a real run directory: JPEGs generated in a folder (fixed seed), then `python -m curate.run` with
`ingest.source=folder` for ingest, license and fetch (untimed), then `stage=detect` alone in a fresh process,
measured. That process runs the whole stage in itself (`dask.processes=false dask.n_workers=1`), so its peak RSS
(`ru_maxrss` from `os.wait4`) is one worker's, plus the Dask client and scheduler it also hosts: an upper bound.
Torch uses 2 threads, the machine's 2 cores.

- `--big N`: N photos of 8000 x 6000 (48 MP, inside fetch.max_pixels=50M) in one shard.
- `--small N`: N photos of 500 x 375 (PASS-sized) in one shard.
- `--before`: the big shard also as the detect stage batched before `detect.batch_pixels` and the face cap (16
  images by count, RetinaFace at native size: `detect.batch_pixels=10**12 detect.face_max_side=0`). It does
  not re-create the whole-tar read of the old stage: that held the shard's JPEG bytes (printed), not pixels.
- `--tar-only N`: a shard of N small JPEGs, without any model: this process's RSS growth when reading the tar
  whole (as `read_members` did for detect) against indexing it (`TarMembers`) and reading every member in turn.
- `--face-caps DEV`: what `detect.face_max_side` does to recall (the labelled dev set, e.g. ../shared/evalsets/dev).
  Its images are all at most 1024 px, so they are upscaled 4x (Lanczos) to stand in for 12-16 MP originals;
  RetinaFace scores them at each cap, the person scores come from the original images, and `decide` (the
  strict preset) turns them into recall and false removals. About 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ROOT.parent / "shared" / "models"


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float  # ru_maxrss: every resident page, the shared libraries' included
    peak_anon_mib: float  # sampled RssAnon: the process's private memory (torch's ~0.6 GB of mapped code is not)


class AnonSampler(threading.Thread):
    """Peak RssAnon of one process, read from /proc every 20 ms (a short peak between reads can be missed)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                lines = self.status.read_text().splitlines()
            except OSError:
                return
            for line in lines:
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like JPEG source: a smooth random colour field plus mild noise (compresses as photos do)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(field).astype(np.int16)
    pixels += rng.integers(-12, 13, size=(height, 1, 1), dtype=np.int16)  # banding, cheap at 48 MP
    pixels += rng.integers(-8, 9, size=(1, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_images(folder: Path, n: int, width: int, height: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        picture(width, height, seed=i).save(path, "JPEG", quality=85)
        total += path.stat().st_size
    return total


def curate(run_dir: Path, folder: Path, models: Path, stage: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "curate.run",
        f"run.dir={run_dir}",
        "ingest.source=folder",
        f"ingest.path={folder}",
        "ingest.assume_license=cc-by",
        "ingest.num_shards=1",
        f"fetch.file_root={folder}",
        "dask.processes=false",
        "dask.n_workers=1",
        "run.progress=false",
        f"models.dir={models}",
        f"stage={stage}",
        *extra,
    ]


def run(cmd: list[str], log: Path) -> Measured:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        sampler = AnonSampler(process.pid)
        sampler.start()
        # wait4: this child's own rusage (ru_maxrss is its peak RSS, in KiB on Linux)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.done.set()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"{' '.join(cmd[2:])} failed; end of {log}:\n{tail}")
    return Measured(seconds, usage.ru_maxrss / 1024, sampler.peak_kib / 1024)


def prepare(work: Path, name: str, n: int, width: int, height: int, models: Path) -> tuple[Path, Path, int]:
    folder, run_dir = work / name / "images", work / name / "run"
    started = time.perf_counter()
    size = write_images(folder, n, width, height)
    print(f"{name}: {n} JPEGs of {width} x {height}, {size / 2**20:.1f} MiB, made in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    for stage in ("ingest", "license", "fetch"):
        run(curate(run_dir, folder, models, stage), work / name / f"{stage}.log")
    return folder, run_dir, size


def detect(work: Path, name: str, label: str, folder: Path, run_dir: Path, models: Path, *extra: str) -> Measured:
    shutil.rmtree(run_dir / "manifest" / "detect", ignore_errors=True)
    shutil.rmtree(run_dir / "stats" / "detect", ignore_errors=True)
    measured = run(curate(run_dir, folder, models, "detect", *extra), work / name / f"detect-{label}.log")
    import pandas as pd

    part = pd.read_parquet(run_dir / "manifest" / "detect" / "part-00000.parquet")
    ok = int((part["detect_status"] == "ok").sum())
    print(f"  {label:<38} peak RSS {measured.peak_rss_mib:6.0f} MiB (private {measured.peak_anon_mib:5.0f})  "
          f"wall {measured.seconds:6.1f} s  ({ok}/{len(part)} rows ok)", flush=True)  # fmt: skip
    return measured


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tar_only(work: Path, n: int) -> None:
    """Reading a shard's tar whole (the old detect) against indexing it and reading members one at a time."""
    sys.path.insert(0, str(ROOT))
    from curate.io.tars import SortedTarWriter, TarMembers, iter_tar

    path = work / "tar-only" / "part-00000.tar"
    rng = np.random.default_rng(0)
    with SortedTarWriter(path) as writer:
        for i in range(n):  # incompressible bytes of a typical PASS JPEG's size: only the bytes count here
            writer.add(f"img{i:06d}.jpg", rng.bytes(int(rng.integers(40_000, 90_000))))
    size = path.stat().st_size / 2**20
    base = rss_mib()
    whole = {name: data for name, data in iter_tar(path)}
    held = rss_mib() - base
    del whole
    base = rss_mib()
    peak = 0.0
    with TarMembers(path) as tar:
        for name in tar.index:
            data = tar.get(name)
            assert data is not None
            peak = max(peak, rss_mib() - base)
    print(f"tar-only: {n} members, {size:.0f} MiB: read whole +{held:.0f} MiB RSS; indexed and read one at a time "
          f"+{peak:.1f} MiB", flush=True)  # fmt: skip


def face_caps(dev: Path, models: Path, caps: tuple[int, ...] = (0, 3000, 2048, 1600, 1024), factor: int = 4) -> None:
    """Full-stack recall and false removals on the dev set upscaled `factor` times, per face cap."""
    from dataclasses import replace

    import pandas as pd
    import torch

    from curate.configload import load_config
    from curate.detect.decide import decide, rule
    from curate.detect.decoding import decode
    from curate.detect.loaders import report_floor
    from curate.detect.retinaface import RetinaFaceDetector
    from curate.evaluate import score_folder

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config([f"models.dir={models}"])
    labels = pd.read_csv(dev / "labels.csv", dtype=str, keep_default_na=False)
    persons = score_folder(replace(cfg, detect=replace(cfg.detect, face=[])), dev, labels)  # the original images
    weights = models / "retinaface_mobilenet0.25_Final.pth"
    floor = report_floor(cfg.detect)
    detectors = {cap: RetinaFaceDetector(weights, max_side=cap or None, report_floor=floor) for cap in caps}
    faces: dict[int, list[float]] = {cap: [] for cap in caps}
    for name in labels["file"]:
        rgb = decode((dev / name).read_bytes())
        big = np.asarray(
            Image.fromarray(rgb).resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.Resampling.LANCZOS)
        )
        for cap, detector in detectors.items():
            faces[cap].append(detector.detect([big])[0].max_score)
    human = (labels["label"] == "human").to_numpy()
    print(f"dev upscaled {factor}x: {int(human.sum())} human, {int((~human).sum())} no_human images")
    for cap in caps:
        scored = persons.assign(face_retinaface_mnet025_max=faces[cap])
        active = rule(cfg.decide, list(scored.columns))
        removed = decide(scored, active)[0] != "keep"
        face_hit = np.asarray(faces[cap]) > active.bars["face_retinaface_mnet025_max"].reject
        print(f"  face_max_side={cap or 'native':<6} removed: human {int(removed[human].sum())}, no_human "
              f"{int(removed[~human].sum())}; RetinaFace alone: human {int(face_hit[human].sum())}, no_human "
              f"{int(face_hit[~human].sum())}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--big", type=int, default=3, help="48 MP photos in one shard (0 = skip)")
    parser.add_argument("--small", type=int, default=2000, help="500 x 375 photos in one shard (0 = skip)")
    parser.add_argument("--before", action="store_true", help="also the big shard as batched before")
    parser.add_argument("--tar-only", type=int, default=0, help="members of the model-free tar comparison")
    parser.add_argument("--face-caps", type=Path, default=None, help="the labelled dev set folder")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every detect run")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="detect-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} "
          f"GiB; work in {work}", flush=True)  # fmt: skip
    try:
        if args.face_caps:
            face_caps(args.face_caps, args.models_dir)
        if args.tar_only:
            tar_only(work, args.tar_only)
        if args.big:
            folder, run_dir, size = prepare(work, "big", args.big, 8000, 6000, args.models_dir)
            print(f"  (the old stage also held the shard's {size / 2**20:.0f} MiB of JPEG bytes at once)")
            detect(work, "big", "defaults", folder, run_dir, args.models_dir, *args.set)
            if args.before:
                old = ("detect.batch_pixels=1000000000000", "detect.face_max_side=0", "decide.preset=custom")
                detect(work, "big", "before: count batches, native faces", folder, run_dir, args.models_dir, *old,
                       *args.set)  # fmt: skip
        if args.small:
            folder, run_dir, _ = prepare(work, "small", args.small, 500, 375, args.models_dir)
            detect(work, "small", "defaults", folder, run_dir, args.models_dir, *args.set)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"(this script's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

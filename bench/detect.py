"""Detect benchmark: images/s per detector and for the full stack, batched vs the PASS approach, in one run.

    .venv/bin/python bench/detect.py --models-dir ../shared/models [--images DIR] [--n 64] [--device cpu|cuda]
        [--clip random] [--e2e 4096] [--pass-n 64] [--set KEY=VALUE ...]

1. Per detector and for the whole `Scorer` stack, on decoded images: batched vs one image at a time.
2. `--e2e N`: end to end from JPEG bytes, as the detect stage runs (`curate.stages.detect.decoded_batches` then
   `Scorer.score`): N PASS-sized JPEGs (long side 500, quality 90, cut from the source photos at varied crops).
   On CUDA the JPEGs are decoded by nvJPEG on the GPU; on the CPU by PIL. Decoding alone is timed too.
3. The PASS approach on the same bytes (`--pass-n` of them): PIL decode, then RetinaFace MobileNet-0.25 and a COCO
   two-stage detector (torchvision Faster R-CNN R50-FPN v2 at its default 800 px short side, standing in for
   PASS's Cascade Mask R-CNN, which is heavier still), one image at a time in float32.

`--clip random` adds a randomly initialised open_clip ViT-B-32 (no CLIP weights exist offline; the cost of a
forward pass does not depend on the weights). Faster R-CNN weights are random unless models-dir holds them, which
changes how many boxes reach NMS, not the network's cost. Peak RSS is this process's ru_maxrss; on CUDA the peak
GPU memory is printed too.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image

from curate.configload import load_config
from curate.detect.decoding import decode, decode_batch
from curate.detect.images import to_chw
from curate.detect.loaders import pick_device
from curate.detect.torchvision_person import TorchvisionPersonDetector
from curate.runconfig import SAMPLE_DIR
from curate.stages.detect import Scorer, decoded_batches


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(work: Callable[[], object]) -> float:
    sync()
    started = time.perf_counter()
    work()
    sync()
    return time.perf_counter() - started


def source_files(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def pass_sized_jpegs(files: list[Path], n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs with a long side of 500 px (PASS's size), quality 90, each a different random crop of a source."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in files]
    out = []
    for k in range(n):
        image = sources[k % len(sources)]
        w, h = image.size
        keep = rng.uniform(0.7, 1.0)
        cw, ch = max(16, int(w * keep)), max(16, int(h * keep))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x0, y0, x0 + cw, y0 + ch))
        scale = 500 / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def rate(run: Callable[[Sequence], object], images: Sequence, batch: int) -> float:
    # warm-up, one whole untimed pass: lazy initialisation and, on CUDA, cuDNN's plan search for each new input
    # shape are paid once per process, not per image
    for start in range(0, len(images), batch):
        run(images[start : start + batch])
    seconds = timed(lambda: [run(images[s : s + batch]) for s in range(0, len(images), batch)])
    return len(images) / seconds


def scorer_parts(scorer: Scorer, clip_label: str, stack_label: str) -> list[tuple[str, Callable[[Sequence], object]]]:
    """(label, batched call) for each of the scorer's detectors, its CLIP filter, and the whole stack."""
    parts: list[tuple[str, Callable[[Sequence], object]]] = [
        (f"{family}:{name}", detector.detect)
        for family, names, detectors in scorer.families
        for name, detector in zip(names, detectors, strict=True)
    ]
    if scorer.clip is not None:
        parts.append((clip_label, scorer.clip.score))
    parts.append((stack_label, scorer.score))
    return parts


def with_random_clip(models_dir: str, model: str, tag: str) -> str:
    """A temporary models dir: the real weights linked in, plus a randomly initialised CLIP checkpoint."""
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="bench-models-"))
    for item in Path(models_dir).iterdir():
        (folder / item.name).symlink_to(item.resolve())
    torch.manual_seed(0)
    clip_model = open_clip.create_model(model, pretrained=None, force_quick_gelu=True)
    torch.save(clip_model.state_dict(), folder / f"clip-{model}-{tag}.pt")
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--images", type=Path, default=SAMPLE_DIR / "images")
    parser.add_argument("--n", type=int, default=64, help="decoded source images for part 1")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clip", choices=("none", "random"), default="none")
    parser.add_argument("--e2e", type=int, default=0, help="PASS-sized JPEGs for the end-to-end run (0 = skip)")
    parser.add_argument("--pass-n", type=int, default=0, help="of those, how many the PASS approach gets")
    parser.add_argument("--skip-single", action="store_true", help="part 1: batched only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    models_dir = args.models_dir
    overrides = [
        f"detect.device={args.device}",
        f"detect.batch_size={args.batch}",
        f"detect.torch_threads={args.threads}",
        *args.set,
    ]
    if args.clip == "random":
        models_dir = with_random_clip(models_dir, "ViT-B-32", "openai")
        overrides += ["detect.clip_model=ViT-B-32", "detect.clip_pretrained=openai"]
    # decide.preset=custom: a speed benchmark sets detect freely (strict refuses settings it was not calibrated with)
    cfg = load_config([f"models.dir={models_dir}", "decide.preset=custom", *overrides])
    files = source_files(args.images, args.n)
    started = time.perf_counter()
    images = [decode(p.read_bytes()) for p in files]
    decode_rate = len(images) / (time.perf_counter() - started)
    scorer = Scorer(cfg)
    stack = [f"{family}:{name}" for family, names, _ in scorer.families for name in names]
    stack += ["clip:ViT-B-32 (random init)"] if scorer.clip is not None else []
    sizes = np.array([im.shape[0] * im.shape[1] for im in images]) / 1e6
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"device {device} ({card}); torch {torch.__version__}; torch threads {args.threads}; batch {args.batch}; "
          f"half {cfg.detect.half and device.startswith('cuda')}")  # fmt: skip
    print(f"stack: {', '.join(stack)}; person tiles {cfg.detect.person_tiles}")
    print(f"part 1: {len(images)} images from {args.images}, median {np.median(sizes):.2f} MP; "
          f"PIL decode (1 thread) {decode_rate:.1f} img/s")  # fmt: skip
    inputs: list = images if not device.startswith("cuda") else [to_chw(im, device) for im in images]
    print(f"{'detector':<34} {'batched img/s':>14} {'one-at-a-time':>14} {'ratio':>7}")
    for label, run in scorer_parts(scorer, "clip:ViT-B-32", "full stack (Scorer)"):
        batched = rate(run, inputs, args.batch)
        if args.skip_single:
            print(f"{label:<34} {batched:>14.1f}")
            continue
        single = rate(run, inputs, 1)
        print(f"{label:<34} {batched:>14.1f} {single:>14.1f} {batched / single:>7.2f}")

    if args.e2e:
        blobs = pass_sized_jpegs(files, args.e2e)
        kib = np.mean([len(b) for b in blobs]) / 1024
        gpu = device if device.startswith("cuda") else None
        print(f"part 2: {len(blobs)} PASS-sized JPEGs (long side 500, q90, mean {kib:.0f} KiB), "
              f"decoded by {'nvJPEG on ' + device if gpu else 'PIL'}")  # fmt: skip
        if gpu:
            decode_batch(blobs[: args.batch], gpu)  # warm-up
            seconds = timed(
                lambda: [decode_batch(blobs[s : s + args.batch], gpu) for s in range(0, len(blobs), args.batch)]
            )
            print(f"{'decode only (nvJPEG, batched)':<34} {len(blobs) / seconds:>14.1f}")
        seconds = timed(lambda: [decode(b) for b in blobs[: min(len(blobs), 512)]])
        print(f"{'decode only (PIL, 1 thread)':<34} {min(len(blobs), 512) / seconds:>14.1f}")

        def end_to_end() -> None:
            for decoded, _errors in decoded_batches(list(blobs), args.batch, gpu):
                scorer.score(decoded)

        for decoded, _ in decoded_batches(list(blobs[: 2 * args.batch]), args.batch, gpu):  # warm-up per shape
            scorer.score(decoded)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        e2e = len(blobs) / timed(end_to_end)
        print(f"{'end to end (bytes -> scores)':<34} {e2e:>14.1f}")
        if args.pass_n:
            face = scorer.families[0][2][0]
            person = TorchvisionPersonDetector(
                "fasterrcnn_resnet50_fpn_v2", weights=None, device=device, native_resolution=False, batch_size=1
            )
            subset = blobs[: args.pass_n]

            def pass_way() -> None:
                for data in subset:
                    image = decode(data)
                    face.detect([image])
                    person.detect([image])

            pass_way_warm = subset[:2]
            for data in pass_way_warm:
                person.detect([decode(data)])
            pass_rate = len(subset) / timed(pass_way)
            print(f"{'PASS approach (1 at a time, fp32)':<34} {pass_rate:>14.1f}")
            print(f"end to end / PASS approach: {e2e / pass_rate:.1f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", end="")
    if device.startswith("cuda"):
        print(f"; peak GPU memory (end-to-end run) {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print()
    if args.clip == "random":
        shutil.rmtree(models_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

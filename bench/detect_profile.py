"""Where the detect stage's time goes on one device: decode, each detector alone, the stack, end to end, and the
top operators under torch.profiler. For finding the bottleneck; `bench/detect.py` gives the headline figures.

    python bench/detect_profile.py --models-dir DIR [--device cuda] [--n 4096] [--batch 128 256] [--profile]
        [--set detect.person_tiles=1 ...]

Images are PASS-sized JPEGs made from the sample photos (`bench/detect.py`'s `pass_sized_jpegs`). Every rate is
images per second over all N images after one untimed warm-up pass over the first batches (new shapes are slow
on CUDA the first time). CLIP is a randomly initialised ViT-B-32 (no CLIP weights exist offline).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detect import pass_sized_jpegs, scorer_parts, source_files, sync, with_random_clip

from curate.configload import load_config
from curate.detect.decoding import decode, decode_batch
from curate.runconfig import SAMPLE_DIR
from curate.stages.detect import Scorer, decoded_batches


def rate(label: str, n: int, work: Callable[[], object]) -> float:
    sync()
    started = time.perf_counter()
    work()
    sync()
    value = n / (time.perf_counter() - started)
    print(f"  {label:<44} {value:>10.1f} img/s", flush=True)
    return value


def in_batches(run: Callable[[Sequence], object], items: Sequence, batch: int) -> Callable[[], None]:
    def work() -> None:
        for start in range(0, len(items), batch):
            run(items[start : start + batch])

    return work


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, nargs="+", default=[128])
    parser.add_argument("--profile", action="store_true", help="torch.profiler over a few batches of the stack")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    gpu = args.device if args.device.startswith("cuda") else None
    card = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"device {args.device} ({card}); torch {torch.__version__}; {os.cpu_count()} CPU cores", flush=True)
    blobs = pass_sized_jpegs(source_files(SAMPLE_DIR / "images", 36), args.n)
    models_dir = with_random_clip(args.models_dir, "ViT-B-32", "openai")

    for batch in args.batch:
        cfg = load_config(
            [
                f"models.dir={models_dir}",
                "decide.preset=custom",  # a speed profile sets detect freely; it decides nothing
                f"detect.device={args.device}",
                f"detect.batch_size={batch}",
                "detect.clip_model=ViT-B-32",
                "detect.clip_pretrained=openai",
                *args.set,
            ]
        )
        scorer = Scorer(cfg)
        print(f"batch {batch}: {args.n} PASS-sized JPEGs; person tiles {cfg.detect.person_tiles}", flush=True)
        decoded: list = []

        def decode_all(out: list = decoded, size: int = batch) -> None:
            out.clear()
            for start in range(0, len(blobs), size):
                chunk = blobs[start : start + size]
                out.extend(decode_batch(chunk, gpu)[0] if gpu else [decode(b) for b in chunk])

        decode_all()  # warm-up
        rate("decode only", args.n, decode_all)
        warm = decoded[: 2 * batch]
        parts = scorer_parts(scorer, "clip:ViT-B-32 (random init)", "stack on decoded images (Scorer.score)")
        for label, run in parts:
            in_batches(run, warm, batch)()
            rate(label, args.n, in_batches(run, decoded, batch))

        def end_to_end(size: int = batch, scorer: Scorer = scorer) -> None:
            for images, _ in decoded_batches(list(blobs), size, gpu):
                scorer.score(images)

        rate("end to end (bytes -> scores, decode overlapped)", args.n, end_to_end)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
            with profile(activities=activities) as prof:
                in_batches(scorer.score, decoded[: 4 * batch], batch)()
                sync()
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=48))
            if gpu:
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=48))
        del decoded
        if gpu:
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
            torch.cuda.empty_cache()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

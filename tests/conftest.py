"""Shared test helpers: run curate through its real entry point, read what it wrote, make real images."""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that busy-wait stall each other on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curate.run import main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

MODELS = SHARED / "models"
# Quick, in-process Dask for tests that are not about distribution; the offline model weights.
FAST = ["dask.processes=false", "dask.n_workers=2", "run.progress=false", f"models.dir={MODELS}"]


# Thresholds no score can pass, no de-duplication, no cap or sample: the release keeps every fetched image. For
# tests of the pipeline's mechanics, which should not change when the human filter or the selection do.
NO_SELECT = ["dedup.exact=false", "dedup.phash_distance=-1", "release.owner_cap=0", "release.target_size=0"]
NO_FILTER = [
    "decide.preset=custom",
    "decide.face=1",
    "decide.person=1",
    "decide.person_tiles=1",
    "decide.hand=1",
    "decide.clip=1",
    *NO_SELECT,
]


@pytest.fixture(scope="module")
def two_threads() -> Iterator[None]:
    """torch on two threads for a module that runs models (this machine's cores), as it was afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run_curate(*overrides: str) -> int:
    return main([*overrides, *FAST])


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes under root, by its path there: two reads equal means nothing under root changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_parts(run_dir: Path, stage: str) -> pd.DataFrame:
    parts = sorted((run_dir / "manifest" / stage).glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_stage(run_dir: Path, *stages: str) -> pd.DataFrame:
    """ingest + the given stages' columns, side by side, over all shards."""
    shards = sorted((run_dir / "manifest" / "ingest").glob("part-*.parquet"))
    frames = []
    for part in shards:
        frames.append(
            pd.concat([pd.read_parquet(run_dir / "manifest" / s / part.name) for s in ("ingest", *stages)], axis=1)
        )
    return pd.concat(frames, ignore_index=True)


def photo(width: int = 320, height: int = 240, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A real, non-uniform picture (smooth gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width, 1)), (y * 255 // max(height, 1)), ((x + y + seed * 17) % 256)], axis=-1)
    noise = rng.integers(0, 40, size=base.shape)
    pixels = np.clip(base + noise, 0, 255).astype("uint8")
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"

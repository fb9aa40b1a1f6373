"""Reference sets (evaluation sets that training data must not duplicate), loaded into hashes or embeddings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from curate.config import ReferenceSet
from curate.dedup.phash import phash

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Reference:
    name: str
    sha256: set[str] = field(default_factory=set)
    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    embeddings: np.ndarray | None = None


def load(ref: ReferenceSet) -> Reference:
    if ref.folder:
        digests: set[str] = set()
        found: list[int] = []
        for path in sorted(p for p in Path(ref.folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            data = path.read_bytes()
            digests.add(hashlib.sha256(data).hexdigest())
            try:
                found.append(phash(data))
            except OSError:  # an undecodable file still counts by its sha256
                pass
        return Reference(ref.name, digests, np.array(found, dtype=np.uint64))
    if ref.hashes:
        path = Path(ref.hashes)
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
        digests = set(table["sha256"].dropna().str.lower()) if "sha256" in table else set()
        hashes = (
            np.array([int(h, 16) for h in table["phash"].dropna()], dtype=np.uint64)
            if "phash" in table
            else np.zeros(0, np.uint64)
        )
        return Reference(ref.name, digests, hashes)
    vectors = np.load(ref.embeddings).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Reference(ref.name, embeddings=vectors)

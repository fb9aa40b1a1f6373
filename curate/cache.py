"""The one caching rule of the run directory.

Every result a stage keeps (a shard's part, dedup's per-shard features and run-wide groups, review's latest
decisions, release's selection, ingest's shard layout) has a marker beside it, written last, that holds the
fingerprint of what the result was made from: the stage's or step's version, its config without the speed-only
keys, and the digests of its inputs. A result is reused exactly when its marker holds the fingerprint the
runner computes now and every file the marker lists is still on disk; anything else redoes it. Only the runner
applies this rule (`curate.runner`); stages say what their results are made from and how to make them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from curate.io.atomic import read_json, sha256_file, write_json


def fingerprint(payload: Any) -> str:
    """sha256 of the payload as canonical JSON (keys sorted; anything else by its str)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def combined_digest(digests: list[str]) -> str:
    """One digest over several files' sha256s, in order (equal to `curate.io.atomic.digest_files` of the files)."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def is_current(marker: dict[str, Any] | None, fp: str, root: Path) -> bool:
    """The rule: a marker whose fingerprint is `fp`, that records no failure, and whose listed outputs (paths
    relative to the run directory) all exist."""
    if marker is None or marker.get("fingerprint") != fp or marker.get("failed"):
        return False
    return all((root / name).exists() for name in marker.get("outputs", ()))


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker, or None when it is absent or unreadable (never trust a marker that cannot be read)."""
    marker = read_json(path)
    return marker if isinstance(marker, dict) else None


def record_step(marker_path: Path, root: Path, fp: str, outputs: list[Path]) -> dict[str, Any]:
    """Write a step's marker (last, after its outputs): its fingerprint, its outputs and their digests."""
    digests = [sha256_file(path) for path in outputs]
    marker = {
        "fingerprint": fp,
        "outputs": [path.relative_to(root).as_posix() for path in outputs],
        "output_sha256": digests,
        "digest": combined_digest(digests),
    }
    write_json(marker_path, marker)
    return marker

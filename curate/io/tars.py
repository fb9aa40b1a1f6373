"""Byte-reproducible tar shards.

Members arrive in any order (downloads finish when they finish), so they are spooled to a scratch file and
written sorted by name, with a fixed mtime, owner and mode, when the shard closes. Memory stays flat however
large the shard is.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from curate.io.atomic import atomic_path

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: any fixed value makes the bytes reproducible


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class SortedTarWriter:
    """Collect members, then write them sorted by name into `path` atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._spool_path = path.with_name(f".{path.name}.spool")
        self._spool = open(self._spool_path, "w+b")
        self._index: dict[str, tuple[int, int]] = {}

    def add(self, name: str, data: bytes) -> None:
        if name in self._index:
            raise ValueError(f"duplicate tar member {name!r}")
        offset = self._spool.seek(0, io.SEEK_END)
        self._spool.write(data)
        self._index[name] = (offset, len(data))

    def close(self) -> None:
        try:
            with atomic_path(self.path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(self._index):
                    offset, size = self._index[name]
                    self._spool.seek(offset)
                    tar.addfile(_member(name, size), io.BytesIO(self._spool.read(size)))
        finally:
            self.abort()

    def abort(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)

    def __enter__(self) -> SortedTarWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) in stored order."""
    with tarfile.open(path, "r") as tar:
        for info in tar:
            handle = tar.extractfile(info)
            if handle is not None:
                yield info.name, handle.read()


def read_members(path: Path, names: set[str]) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {name: data for name, data in iter_tar(path) if name in names}

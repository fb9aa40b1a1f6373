"""Byte-reproducible tar shards.

Members arrive in any order (downloads finish when they finish), so they are spooled to a scratch file and
written sorted by name, with a fixed mtime, owner and mode, when the shard closes. Memory stays flat however
large the shard is.

Reading: `TarMembers` indexes a shard's headers once and reads one member's bytes only when asked, so a reader
holds what it is working on rather than the whole shard (three 48 MP photos in one shard made detect peak at
7.5 GB when it read the tar whole).
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from curate.io.atomic import atomic_path
from curate.schema import is_safe_key

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


class WebDatasetWriter:
    """A WebDataset shard: samples of `<key>.<extension>` members. The key rule is checked here, where members are
    written, not trusted to every source: a key with a dot or a slash would split one sample into several (or
    put it in a folder) for every WebDataset reader."""

    def __init__(self, path: Path) -> None:
        self._tar = SortedTarWriter(path)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: extension (without its dot, e.g. "jpg", "json") -> bytes."""
        if not is_safe_key(key):
            raise ValueError(f"WebDataset key {key!r} is not of [A-Za-z0-9_-] (see curate.schema.safe_id)")
        for extension, data in members.items():
            self._tar.add(f"{key}.{extension}", data)

    def __enter__(self) -> WebDatasetWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._tar.__exit__(exc_type, *rest)


def iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) in stored order."""
    with tarfile.open(path, "r") as tar:
        for info in tar:
            handle = tar.extractfile(info)
            if handle is not None:
                yield info.name, handle.read()


def index_tar(path: Path) -> dict[str, tuple[int, int]]:
    """Regular member name -> (offset of its data, size), from the headers alone. Our shards are uncompressed
    (mode "r:"): a tarfile walks their headers by seeking past each member's data, never reading it. A later
    duplicate name wins, as when extracting. Raises tarfile.ReadError on a file that is not a tar."""
    with tarfile.open(path, "r:") as tar:
        return {info.name: (info.offset_data, info.size) for info in tar if info.isreg()}


class TarMembers:
    """One shard's members, read on demand: `get(name)` returns that member's bytes (None when the tar lacks it
    or does not exist). The tar is opened and indexed at the first lookup, so a reader with nothing to look up
    (a shard an earlier stage failed) never touches it. Safe to call from several threads: reads are positioned
    (os.pread), with no shared file offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[str, tuple[int, int]] | None = None
        self._fd: int | None = None
        self._opening = threading.Lock()  # the first lookup may come from a decode thread

    @property
    def index(self) -> dict[str, tuple[int, int]]:
        with self._opening:
            if self._index is None:
                exists = self.path.exists()
                self._fd = os.open(self.path, os.O_RDONLY) if exists else None
                self._index = index_tar(self.path) if exists else {}
            return self._index

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def get(self, name: str) -> bytes | None:
        where = self.index.get(name)
        if where is None or self._fd is None:
            return None
        offset, size = where
        chunks = []
        while size:  # pread may return less than asked (Linux caps one call near 2 GiB)
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                raise OSError(f"{self.path}: member {name!r} is cut short (file truncated?)")
            chunks.append(chunk)
            offset, size = offset + len(chunk), size - len(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TarMembers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_members(path: Path, names: set[str]) -> dict[str, bytes]:
    """The named members' bytes, all at once (for callers that need a few members; reads no others)."""
    with TarMembers(path) as tar:
        found = {name: tar.get(name) for name in names}
    return {name: data for name, data in found.items() if data is not None}

"""Which reader reads a source's units: the one place that knows every source module (the package's shared
helpers, in `curate.sources`, know none of them, so the readers can import those helpers without a cycle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from curate.config import IngestConfig, Source
from curate.sources import Unit, flickr, folder, pass_release, urls, yfcc


def describe_file(cfg: IngestConfig, path: str) -> tuple[str, str]:
    """(layout, how it was found) for a file before it is read: YFCC's column layout; empty for others."""
    if cfg.source != Source.yfcc:
        return "", ""
    return yfcc.detect_layout(path)


def read_unit(cfg: IngestConfig, unit: Unit) -> Iterator[pa.Table]:
    readers: dict[Source, Callable[[IngestConfig, Unit], Iterator[pa.Table]]] = {
        Source.yfcc: yfcc.read,
        Source.flickr: flickr.read,
        Source.urls: urls.read,
        Source.folder: folder.read,
        Source.pass_release: pass_release.read,
    }
    yield from readers[cfg.source](cfg, unit)

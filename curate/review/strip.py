"""Strip outputs and execution counts from notebooks (they may show people): python -m curate.review.strip FILES"""

from __future__ import annotations

import sys

import nbformat


def strip(path: str) -> bool:
    """True when the file changed."""
    book = nbformat.read(path, as_version=4)
    changed = False
    for cell in book.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(book, path)
    return changed


def main(paths: list[str]) -> int:
    for path in paths:
        if strip(path):
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

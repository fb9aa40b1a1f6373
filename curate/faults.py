"""One row's unexpected exception becomes that row's outcome, never the shard's end.

Stages call `describe` when handling one row raised something no reason code foresaw: the row is then
`failed` with reason `internal_error` (see `curate.schema.FAULT_REASONS`) and this text in `<stage>_error`,
and the shard goes on.
"""

from __future__ import annotations

import traceback

INTERNAL_ERROR = "internal_error"
MAX_FRAMES = 4  # the innermost frames say where it broke; the whole stack would bloat the manifest
MAX_MESSAGE = 300


def describe(err: BaseException) -> str:
    """'Type: message' plus the innermost frames of its traceback, short enough to sit in a manifest column."""
    message = str(err).replace("\n", " ")[:MAX_MESSAGE]
    frames = traceback.extract_tb(err.__traceback__)[-MAX_FRAMES:]
    where = " < ".join(
        f"{frame.name} ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" for frame in reversed(frames)
    )
    return f"{type(err).__name__}: {message}" + (f" [at {where}]" if where else "")

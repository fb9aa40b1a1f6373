"""How a registry entry becomes a detector, and what a detector says it is.

A detector's `identity()` is everything that shapes its outputs: its class and `version`, the effective
arguments it was built with (the speed-only ones left out), the module constants its code reads (anchors,
prompts, pad values …) and the sha256 of the weights it loaded. The detect stage's fingerprint is made of these,
so a changed constant, weights file or version re-runs detect on resume.

The fingerprint is computed in the client, which should not have to load every model to say what it would load:
a `Builder` knows a detector's class and its constructor's arguments for a detect config, so it gives the same
identity without building anything (`Builder.identity`); both go through `describe`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from curate.config import DetectConfig
from curate.detect.types import COUNT_ABOVE
from curate.models.registry import file_digest

# the `weights` of a detector built without a weight file: randomly initialised (tests and timing only)
RANDOM_INIT = "none: randomly initialised"


def report_floor(detect: DetectConfig) -> float:
    """The lowest box score the detect stage stores or counts (boxes >= box_floor, counts above COUNT_ABOVE):
    detectors that support it skip the boxes below, which saves their NMS most of its work and changes no stored
    value."""
    return min(detect.box_floor, COUNT_ABOVE)


def batch_and_floor(detect: DetectConfig) -> dict[str, Any]:
    """The detect stage's arguments for a detector that takes only its batch size and the report floor."""
    return {"batch_size": detect.batch_size, "report_floor": report_floor(detect)}


def arguments(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of `cls(...)` given `values` by name (extra names ignored, e.g. `self` from ``locals()``),
    with the defaults of the ones not given filled in: the effective arguments."""
    signature = inspect.signature(cls)
    bound = signature.bind(**{name: value for name, value in values.items() if name in signature.parameters})
    bound.apply_defaults()
    return dict(bound.arguments)


def _plain(value: Any) -> Any:
    """JSON for what json cannot write itself: paths as text, sets sorted, anything else (an injected object) by
    its type, which says that something was injected without pretending to know what."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return f"<{type(value).__name__}>"


def describe(cls: type[Identified], bound: Mapping[str, Any], weights: str) -> dict[str, Any]:
    """The identity of a `cls` built with the arguments `bound` and weights of digest `weights`."""
    effective = cls.effective(dict(bound))
    params = {k: v for k, v in effective.items() if k != "weights" and k not in cls.speed_only}
    identity = {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "version": cls.version,
        "params": params,
        "constants": cls.constants(),
        "weights": weights,
    }
    # one normal form (tuples as lists, …), so that the client's and a worker's identities compare equal
    normal: dict[str, Any] = json.loads(json.dumps(identity, sort_keys=True, default=_plain))
    return normal


class Identified:
    """The identity half of the `curate.detect.types.Detector` protocol. A subclass sets `version` (bump it when
    the outputs for the same arguments, constants and weights change), lists its speed-only constructor arguments
    in `speed_only`, returns the module constants that shape its outputs from `constants()`, and calls
    ``self._identify(locals())`` first thing in its ``__init__``."""

    version: ClassVar[str]
    # constructor arguments that change only where or how fast it runs, never the results: out of the identity
    speed_only: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    @classmethod
    def constants(cls) -> dict[str, Any]:
        """Module constants its code reads that shape its outputs (read when asked, so a changed one shows)."""
        return {}

    @classmethod
    def effective(cls, bound: dict[str, Any]) -> dict[str, Any]:
        """The arguments with the values the constructor derives for the ones left to it (e.g. an input size
        from a model variant), so that the identity states them."""
        return bound

    @classmethod
    def weights_of(cls, bound: Mapping[str, Any]) -> str:
        """The digest of the weights these arguments load: the sha256 of the file."""
        weights = bound.get("weights")
        return file_digest(Path(weights)) if weights is not None else RANDOM_INIT

    def _identify(self, values: Mapping[str, Any]) -> None:
        # The arguments and the weights are taken now (the file as it is loaded); version and constants are read
        # on each identity(), so that a detector kept across runs in a worker never reports stale ones.
        self._arguments = arguments(type(self), values)
        self._weights = type(self).weights_of(self._arguments)

    def identity(self) -> dict[str, Any]:
        return describe(type(self), self._arguments, self._weights)


@dataclass(frozen=True)
class Builder:
    """A registry entry's builder (`curate.models.registry.ModelSpec.builder`): the detector class, and
    `options(detect)`, its constructor's keyword arguments for a detect config. The entry's `params` are
    constructor arguments too, on top (they tell its entries apart: a variant, an architecture). Calling it
    builds the detector; `identity` says what that detector would report, without building it."""

    cls: type[Identified]
    options: Callable[[DetectConfig], dict[str, Any]]

    def kwargs(self, detect: DetectConfig, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.options(detect), **params}

    def __call__(self, weights: Path | None, device: str, detect: DetectConfig, **params: Any) -> Any:
        return self.cls(weights=weights, device=device, **self.kwargs(detect, params))  # type: ignore[call-arg]

    def identity(self, weights: str, detect: DetectConfig, **params: Any) -> dict[str, Any]:
        """The built detector's `identity()`, given the digest of the weights file it would load."""
        return describe(self.cls, arguments(self.cls, {"weights": None, **self.kwargs(detect, params)}), weights)

"""`curate <command> [args ...]`: the one entry point, dispatching to the commands' own mains.

A hand dispatcher rather than argparse: the commands take Hydra-style `key=value` overrides, which argparse
would try to parse. Each command's module is imported only when that command runs, so `curate --help` starts
fast and never loads torch or Dask.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import curate

__all__ = ["COMMANDS", "main", "overview"]

HELP_FLAGS = ("-h", "--help")
HELP_ALL_FLAG = "--help-all"

MODELS_USAGE = """\
usage: curate models list
       curate models download [pipeline=NAME] [key=value ...]

  list       every model the registry knows: name, kind, file, pinned sha256, licence
  download   fetch (sha256-checked) every weight the recipe's detect.* keys name into models.cache; copy that
             folder to an air-gapped machine and pass models.dir=/that/folder there

The same as python -m curate.models ...; see `curate run --help` for the models.* and detect.* keys.
"""


@dataclass(frozen=True)
class Command:
    summary: str
    example: str
    module: str  # the module holding main(argv) -> int
    help: Callable[[list[str]], str]


def _run_help(args: list[str]) -> str:
    from curate import configdoc
    from curate.configload import pipelines_dir  # lazily: it imports Hydra

    return configdoc.run_help(pipelines_dir(), full=HELP_ALL_FLAG in args)


def _evaluate_help(args: list[str]) -> str:
    return _module_docstring("curate.evaluate")


def _models_help(args: list[str]) -> str:
    return MODELS_USAGE


def _module_docstring(name: str) -> str:
    """A module's docstring read from its source, without importing it (curate.evaluate imports torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return f"(no help found for {name})"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return ast.get_docstring(tree) or f"(no help found for {name})"


COMMANDS: dict[str, Command] = {
    "run": Command(
        "run stages of the pipeline over a run directory (Hydra-style key=value overrides)",
        "curate run pipeline=sample models.dir=/path/to/weights",
        "curate.run",
        _run_help,
    ),
    "evaluate": Command(
        "measure the human filter's recall and false-removal rate on a labelled folder",
        "curate evaluate images=DIR labels=DIR/labels.csv out=eval.json",
        "curate.evaluate",
        _evaluate_help,
    ),
    "calibrate": Command(
        "per-model thresholds for a target recall, from a labelled folder or a run's review ledger",
        "curate calibrate images=DIR out=preset.yaml target_recall=0.97",
        "curate.calibrate",
        lambda args: _module_docstring("curate.calibrate"),
    ),
    "models": Command(
        "list the model weights curate knows, or download those a recipe needs",
        "curate models download pipeline=pass",
        "curate.models.__main__",
        _models_help,
    ),
}


def overview() -> str:
    about = (curate.__doc__ or "curate").strip().splitlines()[0]
    width = max(len(name) for name in COMMANDS) + 3
    lines = [about, "", "usage: curate <command> [args ...]", "", "commands:"]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}{command.summary}")
        lines.append(f"  {'':<{width}}e.g. {command.example}")
    lines += [
        "",
        "curate run --help for the stages, recipes and every config key",
        "curate <command> --help for that command's usage; `python -m curate` is the same as `curate`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # `curate run --help | head`: the reader left; say nothing more, and keep Python's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in HELP_FLAGS:
        print(overview())
        return 0
    if args[0] == "help":
        # `curate help run` reads as `curate run --help`.
        return _dispatch([args[1], "--help"] if len(args) > 1 else [])
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        known = ", ".join(COMMANDS)
        print(f"curate: unknown command {name!r}; the commands are {known} (curate --help)", file=sys.stderr)
        return 2
    # Anywhere on the line: no Hydra override is ever spelt -h or --help, so there is no ambiguity.
    if any(arg in (*HELP_FLAGS, HELP_ALL_FLAG) for arg in rest):
        print(command.help(rest).rstrip("\n"))
        return 0
    command_main: Callable[[list[str]], int] = importlib.import_module(command.module).main
    return command_main(rest)

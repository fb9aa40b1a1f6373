"""The documentation of every config key, read from the comments in `curate/config.py`, and the text of
`curate run --help`.

The comments above each dataclass field are the one place keys are documented; this module reads them back
(ast for where each field is, tokenize for the comments) so the help can never drift from the schema. It is
imported by `curate --help`, so it imports nothing heavier than `curate.config` (no Hydra, Dask or torch).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.config import CurateConfig, Stage

__all__ = [
    "STAGE_DOCS",
    "GroupDoc",
    "KeyDoc",
    "config_groups",
    "config_keys",
    "field_docs",
    "first_sentence",
    "run_help",
    "undocumented_keys",
]

WIDTH = 110

USAGE = "curate run [pipeline=NAME] [stage=STAGE] [run.dir=DIR] [key=value ...]"

# One line per stage. A Stage without an entry here shows as undocumented, and tests/test_cli.py fails on it.
STAGE_DOCS: dict[str, str] = {
    "ingest": "read the candidates of ingest.source (YFCC metadata, Flickr API, URL lists, a folder, a PASS "
    "release) into ingest.num_shards shards",
    "license": "keep the licences in license.allow (CC BY by default, as PASS did); attribution is kept",
    "fetch": "download and validate the images, strip EXIF/XMP/IPTC, write one tar per shard",
    "detect": "run the face and person detectors and the CLIP filter; store raw scores and boxes (no decision)",
    "dedup": "group exact (sha256), near (pHash) and semantic (CLIP) duplicates over the whole run, and drop "
    "those of dedup.references",
    "review": "apply people's keep/remove/unsure decisions from the ledger review/decisions.parquet",
    "recheck": "with release.previous: ask the sources again whether each image it released is still there, under "
    "an allowed licence, not opted out (Flickr per owner, other URLs by a request)",
    "release": "decide keep/reject/review from the stored scores, cap per owner, sample, apply takedowns and the "
    "recheck; write the PASS-layout tars, WebDataset shards, manifest.parquet and the data card",
    "all": "every stage above, in order; finished shards are skipped, so a killed run resumes",
    "audit": "draw a seeded sample of released images (audit.size) for people to check",
    "report": "write the static HTML report, run.dir/report/index.html",
}

RUN_DIR_NOTE = (
    "A run directory remembers its pipeline and config: a later invocation with run.dir=DIR starts from the "
    "config saved there, with its own overrides on top, so `curate run run.dir=DIR stage=release` needs no "
    "other key. A different pipeline= for an existing run directory is refused."
)

# Comments that steer tools, not readers.
_PRAGMA = re.compile(r"^(fmt:|type:|noqa|pragma|ruff:|mypy:)")
# A sentence ends at a full stop followed by a capital, except after the abbreviations the docs use.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)\.(?=\s+[A-Z(\"'`])")


@dataclass(frozen=True)
class KeyDoc:
    """One settable key: `key=value` on the command line."""

    key: str  # dotted, e.g. ingest.flickr.per_page; entries of a list of dataclasses read dedup.references[].name
    group: str  # the dotted key of the dataclass holding it; "" for the top level
    type: str  # the annotation as written in config.py
    default: str  # formatted as one would type it
    doc: str  # the full comment text; "" when the field has none
    choices: tuple[str, ...] = ()  # an enum's values

    @property
    def summary(self) -> str:
        return first_sentence(self.doc)


@dataclass(frozen=True)
class GroupDoc:
    """A config group (one dataclass): `run`, `ingest.flickr`, ...; "" is the top level."""

    name: str
    doc: str  # the class docstring, if it has one
    keys: tuple[KeyDoc, ...]


@dataclass(frozen=True)
class _FieldSource:
    annotation: str
    doc: str


def first_sentence(text: str) -> str:
    match = _SENTENCE_END.search(text)
    return text[: match.start() + 1] if match else text


def field_docs(cls: type) -> dict[str, str]:
    """Each field's doc: the `#` comment lines directly above it (joined into one paragraph), else a comment at
    the end of its own line, else "". Fields inherited from dataclass bases are included."""
    return {name: source.doc for name, source in _field_sources(cls).items()}


def _field_sources(cls: type) -> dict[str, _FieldSource]:
    found: dict[str, _FieldSource] = {}
    # Bases first, so a subclass's redefinition of a field wins.
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_class_field_sources(klass))
    return found


def _class_field_sources(cls: type) -> dict[str, _FieldSource]:
    source = textwrap.dedent(inspect.getsource(cls))
    node = _class_node(source, cls.__name__)
    full_line, trailing = _comments(source)
    lines = source.splitlines()
    found: dict[str, _FieldSource] = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above = _comment_block_above(stmt.lineno, full_line, lines)
            doc = " ".join(above) or trailing.get(stmt.end_lineno or stmt.lineno, "")
            found[stmt.target.id] = _FieldSource(ast.unparse(stmt.annotation), doc)
    return found


def _class_node(source: str, name: str) -> ast.ClassDef:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise ValueError(f"class {name} not found in its own source")


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """The comments by line number, split into those alone on their line and those after code. tokenize, not a
    text search, so a '#' inside a string is never taken for a comment."""
    full_line: dict[int, str] = {}
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        text = token.string.lstrip("#").strip()
        if _PRAGMA.match(text):
            continue
        row, col = token.start
        (full_line if not token.line[:col].strip() else trailing)[row] = text
    return full_line, trailing


def _comment_block_above(lineno: int, full_line: dict[int, str], lines: list[str]) -> list[str]:
    """The comment lines immediately above `lineno` (1-based); a blank line or code ends the block."""
    block: list[str] = []
    row = lineno - 1
    while row >= 1 and (row in full_line or _is_pragma_only(lines[row - 1])):
        if full_line.get(row):
            block.append(full_line[row])
        row -= 1
    return block[::-1]


def _is_pragma_only(line: str) -> bool:
    text = line.strip()
    return text.startswith("#") and bool(_PRAGMA.match(text.lstrip("#").strip()))


def _class_docstring(cls: type) -> str:
    # Not cls.__doc__: dataclasses invent one ("RunConfig(dir: str = ...)") for classes that have none.
    node = _class_node(textwrap.dedent(inspect.getsource(cls)), cls.__name__)
    return " ".join((ast.get_docstring(node) or "").split())


def config_groups(root: type = CurateConfig) -> list[GroupDoc]:
    """Every group of the schema, parents before their children, each with its keys in source order."""
    groups: list[GroupDoc] = []
    _walk(root, "", groups)
    return groups


def config_keys(root: type = CurateConfig) -> list[KeyDoc]:
    """Every settable key of the schema: nested dataclasses are walked (ingest.flickr.*), a list of dataclasses
    gives its own key plus one per entry field (dedup.references[].name)."""
    return [key for group in config_groups(root) for key in group.keys]


def undocumented_keys(root: type = CurateConfig) -> list[str]:
    return [key.key for key in config_keys(root) if not key.doc]


def _walk(cls: type, group: str, groups: list[GroupDoc]) -> None:
    hints = typing.get_type_hints(cls)
    sources = _field_sources(cls)
    keys: list[KeyDoc] = []
    children: list[tuple[type, str]] = []
    for spec in dataclasses.fields(cls):
        key = f"{group}.{spec.name}" if group else spec.name
        hint = hints[spec.name]
        if _is_dataclass_type(hint):
            children.append((hint, key))  # a group of its own, not a key
            continue
        source = sources.get(spec.name, _FieldSource(str(hint), ""))
        keys.append(KeyDoc(key, group, source.annotation, _format_default(spec), source.doc, _choices(hint)))
        item = _list_item(hint)
        if item is not None and _is_dataclass_type(item):
            children.append((item, f"{key}[]"))
    groups.append(GroupDoc(group, _class_docstring(cls), tuple(keys)))
    for child, name in children:
        _walk(child, name, groups)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _list_item(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None


def _choices(hint: Any) -> tuple[str, ...]:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return tuple(str(member.value) for member in hint)
    return ()


def _format_default(spec: dataclasses.Field[Any]) -> str:
    if spec.default is not dataclasses.MISSING:
        return _format_value(spec.default)
    if spec.default_factory is not dataclasses.MISSING:
        return _format_value(spec.default_factory())
    return "(required)"


def _format_value(value: Any) -> str:
    """As one would write it in an override: true/false, bare words, quotes only where needed, [a, b]."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[\w./:~+-]+", value) else f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    return str(value)


def run_help(pipelines: Path, full: bool = False) -> str:
    """The text of `curate run --help`. Each key shows the first sentence of its doc; `full` shows all of it."""
    sections = [
        _usage_section(),
        _stages_section(),
        _recipes_section(pipelines),
        _wrap(RUN_DIR_NOTE),
        _keys_section(full),
    ]
    return "\n\n".join(sections)


def _usage_section() -> str:
    return "\n".join(
        [
            f"usage: {USAGE}",
            f"       (the same as: python -m {USAGE.replace('curate run', 'curate.run', 1)})",
            "",
            _wrap(
                "Runs one stage, or all of them, of the curation pipeline over a run directory. Arguments are "
                "Hydra-style key=value overrides on top of the recipe; a misspelt key or a bad value stops the "
                "run before any work starts."
            ),
        ]
    )


def _stages_section() -> str:
    names = [stage.value for stage in Stage]
    # Stages declared after `all` are tools that `all` does not run.
    cut = names.index(Stage.all.value) + 1 if Stage.all.value in names else len(names)
    width = max(len(name) for name in names) + 2
    lines = ["stages (stage=STAGE, default all):"]
    lines += [_item(name, STAGE_DOCS.get(name, "(undocumented)"), width) for name in names[:cut]]
    lines += ["", "tools (stage=TOOL; not part of all, run by hand over a finished run):"]
    lines += [_item(name, STAGE_DOCS.get(name, "(undocumented)"), width) for name in names[cut:]]
    return "\n".join(lines)


def _recipes_section(pipelines: Path) -> str:
    recipes = sorted(pipelines.glob("*.yaml"))
    lines = [f"recipes (pipeline=NAME, default sample; from {pipelines}, or pipeline=path/to/recipe.yaml):"]
    if not recipes:
        lines.append("  (none found)")
    width = max((len(path.stem) for path in recipes), default=0) + 2
    lines += [_item(path.stem, _recipe_description(path), width) for path in recipes]
    return "\n".join(lines)


def _recipe_description(path: Path) -> str:
    """The first sentence of the recipe file's first comment line (the lines after it are usually examples)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            return first_sentence(text.lstrip("#").strip()).rstrip(":") or "(no description)"
        if text:
            break
    return "(no description)"


def _keys_section(full: bool) -> str:
    intro = _wrap(
        "config keys (key=default as in curate/config.py; a recipe may set other defaults, see "
        "pipelines/NAME.yaml). " + ("" if full else "curate run --help-all shows each key's full documentation.")
    )
    return "\n\n".join([intro, *(_group_text(group, full) for group in config_groups())])


def _group_text(group: GroupDoc, full: bool) -> str:
    title = group.name or "top level"
    if group.name.endswith("[]"):
        title += " (each entry of the list)"
    lines = [_wrap(f"{title}: {group.doc}" if group.doc else f"{title}:")]
    for key in group.keys:
        lines.append(f"  {key.key}={key.default}  ({key.type})")
        doc = key.doc if full else key.summary
        if key.choices:
            doc = f"{doc} One of: {', '.join(key.choices)}.".strip()
        lines.append(_wrap(doc or "(undocumented)", indent=6))
    return "\n".join(lines)


def _item(name: str, text: str, width: int) -> str:
    return _wrap(text, indent=2 + width, first=f"  {name:<{width}}")


def _wrap(text: str, indent: int = 0, first: str | None = None) -> str:
    # No breaks inside words or at hyphens: a key or a code like cc-by must stay whole to be searchable.
    return textwrap.fill(
        text,
        width=WIDTH,
        initial_indent=" " * indent if first is None else first,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )

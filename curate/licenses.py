"""Licence normalisation: Flickr licence ids, licence names, SPDX ids and licence URLs → one canonical code.

Every input is parsed into its parts (the Creative Commons elements BY/NC/ND/SA, a version, a jurisdiction
port) and only a combination we know becomes a code: a text with any part we do not recognise gives None,
never a guess. "CC BY-NC" must never read as "cc-by"; that would release NonCommercial images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Canonical code → (human name, deed URL without a version). `deed_url` adds the version when it is known.
LICENSES: dict[str, tuple[str, str]] = {
    "cc-by": ("Attribution License", "https://creativecommons.org/licenses/by/"),
    "cc-by-sa": ("Attribution-ShareAlike License", "https://creativecommons.org/licenses/by-sa/"),
    "cc-by-nd": ("Attribution-NoDerivs License", "https://creativecommons.org/licenses/by-nd/"),
    "cc-by-nc": ("Attribution-NonCommercial License", "https://creativecommons.org/licenses/by-nc/"),
    "cc-by-nc-sa": (
        "Attribution-NonCommercial-ShareAlike License",
        "https://creativecommons.org/licenses/by-nc-sa/",
    ),
    "cc-by-nc-nd": (
        "Attribution-NonCommercial-NoDerivs License",
        "https://creativecommons.org/licenses/by-nc-nd/",
    ),
    "cc0": ("Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "pdm": ("Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
    "no-known-copyright": ("No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    "us-gov": ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
    "all-rights-reserved": ("All Rights Reserved", ""),
}
KNOWN_CODES = frozenset(LICENSES)
# The versions Creative Commons published; "CC BY 5.0" is a typo or a forgery, not a licence we can cite.
CC_VERSIONS = frozenset({"1.0", "2.0", "2.5", "3.0", "4.0"})


@dataclass(frozen=True)
class License:
    code: str
    version: str | None = None  # "2.0", "4.0", ... when the input said which


# flickr.photos.licenses.getInfo ids: 1-6 are the 2.0 licences, 11-16 the same licences at 4.0.
FLICKR_IDS: dict[int, License] = {
    0: License("all-rights-reserved"),
    1: License("cc-by-nc-sa", "2.0"),
    2: License("cc-by-nc", "2.0"),
    3: License("cc-by-nc-nd", "2.0"),
    4: License("cc-by", "2.0"),
    5: License("cc-by-sa", "2.0"),
    6: License("cc-by-nd", "2.0"),
    7: License("no-known-copyright"),
    8: License("us-gov"),
    9: License("cc0", "1.0"),
    10: License("pdm", "1.0"),
    11: License("cc-by", "4.0"),
    12: License("cc-by-sa", "4.0"),
    13: License("cc-by-nd", "4.0"),
    14: License("cc-by-nc", "4.0"),
    15: License("cc-by-nc-sa", "4.0"),
    16: License("cc-by-nc-nd", "4.0"),
}

# Whole texts that are no Creative Commons licence (or that name CC0/PDM in words), after `_clean`.
_PLAIN_NAMES: dict[str, str] = {
    "all rights reserved": "all-rights-reserved",
    "no known copyright restrictions": "no-known-copyright",
    "no known copyright": "no-known-copyright",
    "united states government work": "us-gov",
    "public domain dedication": "cc0",
    "public domain dedication cc0": "cc0",
    "public domain mark": "pdm",
}
_PLAIN_URLS: dict[str, str] = {
    "flickr.com/commons/usage": "no-known-copyright",
    "usa.gov/copyright.shtml": "us-gov",
}
# The words of a CC licence name in any of its spellings, each → the element it stands for.
_ELEMENTS = {
    "by": "by",
    "attribution": "by",
    "nc": "nc",
    "noncommercial": "nc",
    "nd": "nd",
    "noderivs": "nd",
    "noderivatives": "nd",
    "sa": "sa",
    "sharealike": "sa",
}
# Words that say nothing about which licence it is.
_FILLER = frozenset({"creative", "commons", "cc", "license", "licence", "international", "generic", "unported"})
_SPELLINGS = (
    (re.compile(r"non[\s-]+commercial"), "noncommercial"),
    (re.compile(r"no[\s-]+derivs"), "noderivs"),
    (re.compile(r"no[\s-]+derivatives"), "noderivatives"),
    (re.compile(r"share[\s-]+alike"), "sharealike"),
)
_VERSION = re.compile(r"\d+(?:\.\d+)?")
_JURISDICTION = re.compile(r"[a-z]{2,3}")  # a CC port: de, fr, uk, igo, ...
_CC_URL = re.compile(
    r"creativecommons\.org/licenses/(?P<kind>[a-z+-]+)(?:/(?P<version>\d+(?:\.\d+)?))?(?:/(?P<rest>[^?#]*))?",
    re.IGNORECASE,
)
_CC_PD_URL = re.compile(r"creativecommons\.org/publicdomain/(?P<kind>zero|mark)(?:/(?P<version>\d+\.\d+))?", re.I)


def identify(license_id: str | int | None = None, name: str | None = None, url: str | None = None) -> License | None:
    """The licence the inputs name, or None when nothing we were given is recognised.

    A Flickr numeric id (or a canonical code in license_id) wins, then the URL (it carries the exact variant),
    then the name. Any of the three may hold any spelling: a licence column often holds a URL.
    """
    found = None
    for text in (license_id, url, name):
        if text is None or str(text).strip() == "":
            continue
        found = _identify_text(str(text).strip())
        if found is not None:
            break
    if found is None or found.version is not None:
        return found
    # The one that named the code did not say which version: take it from another input naming the same code.
    for text in (license_id, url, name):
        other = _identify_text(str(text).strip()) if text not in (None, "") else None
        if other is not None and other.code == found.code and other.version is not None:
            return other
    return found


def normalize(license_id: str | int | None = None, name: str | None = None, url: str | None = None) -> str | None:
    """The canonical code only (see `identify`)."""
    found = identify(license_id, name, url)
    return found.code if found else None


def has_license_info(license_id: object, name: object, url: object) -> bool:
    """Whether the source said anything at all about the licence (only such rows may get an assumed one)."""
    return any(isinstance(value, str) and value.strip() for value in (license_id, name, url))


def deed_url(code: str, version: str | None = None) -> str:
    """The URL to cite for a code: the versioned deed when the version is known."""
    base = LICENSES[code][1]
    if version and code.startswith("cc-by"):
        return f"{base}{version}/"
    return base


def _identify_text(text: str) -> License | None:
    if text.isdigit():
        return FLICKR_IDS.get(int(text))
    lowered = text.lower()
    if lowered in KNOWN_CODES:
        return License(lowered)
    if "://" in lowered or "creativecommons.org" in lowered or lowered.startswith("www."):
        return _identify_url(lowered)
    return _identify_name(lowered)


def _identify_url(url: str) -> License | None:
    match = _CC_URL.search(url)
    if match:
        code = _code_from_elements(match["kind"].split("-"))
        version = match["version"]
        if code is None or (version is not None and version not in CC_VERSIONS):
            return None
        return License(code, version)
    match = _CC_PD_URL.search(url)
    if match:
        return License("cc0" if match["kind"] == "zero" else "pdm", match["version"] or "1.0")
    for fragment, code in _PLAIN_URLS.items():
        if fragment in url:
            return License(code)
    return None


def _clean(name: str) -> str:
    text = name.replace("+", " ").replace("_", " ")
    for pattern, word in _SPELLINGS:
        text = pattern.sub(word, text)
    text = re.sub(r"[()]", " ", text)
    return " ".join(text.split())


def _identify_name(name: str) -> License | None:
    text = _clean(name)
    for suffix in (" license", " licence"):
        text = text.removesuffix(suffix)
    if text in _PLAIN_NAMES:
        return License(_PLAIN_NAMES[text])
    tokens = [t for t in re.split(r"[\s,/-]+", text) if t]
    if tokens[:1] in (["cc0"], ["cc", "zero"]) or tokens[:2] == ["cc", "0"]:
        rest = tokens[1:] if tokens[0] == "cc0" else tokens[2:]
        # CC0's only version is 1.0, "universal" its title: anything else is not CC0 as we know it.
        if all(t in ("1.0", "universal", "license", "licence") for t in rest):
            return License("cc0", "1.0")
        return None
    if tokens[:1] == ["pdm"]:
        return License("pdm", "1.0") if all(t in ("1.0",) for t in tokens[1:]) else None
    elements: list[str] = []
    version: str | None = None
    for token in tokens:
        if version is None and token in _ELEMENTS:
            elements.append(_ELEMENTS[token])
        elif token in _FILLER:
            continue
        elif version is None and _VERSION.fullmatch(token):
            version = token if "." in token else f"{token}.0"
        elif version is not None and _JURISDICTION.fullmatch(token):
            continue  # "CC-BY-3.0-DE": the port does not change what the licence allows
        else:
            return None  # a word we do not know may change the meaning: no guess
    code = _code_from_elements(elements)
    if code is None or (version is not None and version not in CC_VERSIONS):
        return None
    return License(code, version)


def _code_from_elements(parts: list[str]) -> str | None:
    """by + any of nc/nd/sa in any order (CC 1.0 wrote "by-nd-nc") → the canonical code; None otherwise."""
    words = [_ELEMENTS.get(p, p) for p in parts if p]
    if words.count("by") != 1 or len(set(words)) != len(words):
        return None
    rest = set(words) - {"by"}
    if not rest <= {"nc", "nd", "sa"} or {"nd", "sa"} <= rest:
        return None
    code = "cc-by" + "".join(f"-{e}" for e in ("nc", "nd", "sa") if e in rest)
    return code if code in KNOWN_CODES else None

"""Licence normalisation: Flickr licence ids, YFCC licence names and licence URLs → one canonical code."""

from __future__ import annotations

import re

# Canonical code → (human name, canonical deed URL).
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

# flickr.photos.licenses.getInfo ids.
FLICKR_IDS: dict[int, str] = {
    0: "all-rights-reserved",
    1: "cc-by-nc-sa",
    2: "cc-by-nc",
    3: "cc-by-nc-nd",
    4: "cc-by",
    5: "cc-by-sa",
    6: "cc-by-nd",
    7: "no-known-copyright",
    8: "us-gov",
    9: "cc0",
    10: "pdm",
    11: "cc-by",
    12: "cc-by-sa",
    13: "cc-by-nd",
    14: "cc-by-nc",
    15: "cc-by-nc-sa",
    16: "cc-by-nc-nd",
}

_NAME_TO_CODE = {name.lower(): code for code, (name, _) in LICENSES.items()}
_NAME_TO_CODE.update(
    {
        "attribution": "cc-by",
        "attribution-sharealike": "cc-by-sa",
        "attribution-noderivs": "cc-by-nd",
        "attribution-noncommercial": "cc-by-nc",
        "attribution-noncommercial-sharealike": "cc-by-nc-sa",
        "attribution-noncommercial-noderivs": "cc-by-nc-nd",
        "public domain dedication": "cc0",
        "public domain mark": "pdm",
        "cc by": "cc-by",
        "cc by-sa": "cc-by-sa",
        "cc0": "cc0",
    }
)
_CC_URL = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/", re.IGNORECASE)
_CC0_URL = re.compile(r"creativecommons\.org/publicdomain/zero/", re.IGNORECASE)
_PDM_URL = re.compile(r"creativecommons\.org/publicdomain/mark/", re.IGNORECASE)


def normalize(license_id: str | int | None = None, name: str | None = None, url: str | None = None) -> str | None:
    """Return the canonical code, or None when nothing we were given is recognised.

    The URL wins over the name (it carries the exact variant); a Flickr numeric id is used when given.
    """
    if license_id not in (None, ""):
        try:
            code = FLICKR_IDS.get(int(license_id))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            code = None
        if code:
            return code
        if isinstance(license_id, str) and license_id.lower() in KNOWN_CODES:
            return license_id.lower()
    if url:
        match = _CC_URL.search(url)
        if match:
            code = "cc-" + match.group(1).lower()
            return code if code in KNOWN_CODES else None
        if _CC0_URL.search(url):
            return "cc0"
        if _PDM_URL.search(url):
            return "pdm"
    if name:
        cleaned = name.replace("+", " ").strip().lower()
        return _NAME_TO_CODE.get(cleaned) or _NAME_TO_CODE.get(cleaned.removesuffix(" license"))
    return None

"""Licences: every usual spelling is read with its version, no variant is mis-read, and an assumed licence
reaches only the rows that carry no licence information at all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import read_stage, run_curate

from curate.licenses import License, deed_url, identify, normalize


@pytest.mark.parametrize(
    ("text", "code", "version"),
    [
        # Codes and short names.
        ("cc-by", "cc-by", None),
        ("CC BY", "cc-by", None),
        ("CC BY 4.0", "cc-by", "4.0"),
        ("CC-BY-4.0", "cc-by", "4.0"),  # also the SPDX id
        ("CC BY 2.0", "cc-by", "2.0"),
        ("cc-by-sa-3.0", "cc-by-sa", "3.0"),
        ("CC BY-SA 2.0 DE", "cc-by-sa", "2.0"),
        ("CC-BY-NC-SA-2.0", "cc-by-nc-sa", "2.0"),
        ("CC-BY-3.0-IGO", "cc-by", "3.0"),
        ("CC0-1.0", "cc0", "1.0"),
        ("CC0 1.0 Universal", "cc0", "1.0"),
        ("cc0", "cc0", None),
        ("CC BY-NC", "cc-by-nc", None),
        ("CC BY-NC-ND 4.0", "cc-by-nc-nd", "4.0"),
        ("cc by 4", "cc-by", "4.0"),
        # Names as YFCC and Flickr write them (YFCC with + for spaces).
        ("Attribution License", "cc-by", None),
        ("Attribution+License", "cc-by", None),
        ("Attribution-NonCommercial License", "cc-by-nc", None),
        ("Attribution-NonCommercial+License", "cc-by-nc", None),
        ("Attribution-NoDerivs License", "cc-by-nd", None),
        ("Attribution-NonCommercial-ShareAlike+License", "cc-by-nc-sa", None),
        ("Attribution-NonCommercial-NoDerivs License", "cc-by-nc-nd", None),
        ("Creative Commons Attribution 4.0 International License", "cc-by", "4.0"),
        ("Creative Commons Attribution-ShareAlike 3.0 Unported", "cc-by-sa", "3.0"),
        ("Attribution Non-Commercial No Derivatives", "cc-by-nc-nd", None),
        ("All Rights Reserved", "all-rights-reserved", None),
        ("No known copyright restrictions", "no-known-copyright", None),
        ("Public Domain Dedication (CC0)", "cc0", None),
        ("Public Domain Mark", "pdm", None),
        # URLs: http/https, with and without the trailing slash, jurisdiction ports, deeds, legal code.
        ("http://creativecommons.org/licenses/by/2.0/", "cc-by", "2.0"),
        ("https://creativecommons.org/licenses/by/4.0", "cc-by", "4.0"),
        ("https://creativecommons.org/licenses/by/4.0/deed.en", "cc-by", "4.0"),
        ("http://creativecommons.org/licenses/by/2.0/de/", "cc-by", "2.0"),
        ("https://creativecommons.org/licenses/by/3.0/legalcode", "cc-by", "3.0"),
        ("http://creativecommons.org/licenses/by/", "cc-by", None),
        ("https://www.creativecommons.org/licenses/by-sa/2.5/it/deed.it", "cc-by-sa", "2.5"),
        ("http://creativecommons.org/licenses/by-nc/2.0/", "cc-by-nc", "2.0"),
        ("http://creativecommons.org/licenses/by-nd-nc/1.0/", "cc-by-nc-nd", "1.0"),  # CC 1.0's order
        ("https://creativecommons.org/publicdomain/zero/1.0/", "cc0", "1.0"),
        ("https://creativecommons.org/publicdomain/mark/1.0/", "pdm", "1.0"),
        ("https://www.flickr.com/commons/usage/", "no-known-copyright", None),
        # Flickr ids.
        ("4", "cc-by", "2.0"),
        ("11", "cc-by", "4.0"),
        ("0", "all-rights-reserved", None),
        ("2", "cc-by-nc", "2.0"),
    ],
)
def test_spellings_are_read_with_their_version(text: str, code: str, version: str | None) -> None:
    for given in ({"license_id": text}, {"name": text}, {"url": text}):
        assert identify(**given) == License(code, version), given  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "CC BY-XX",  # an element that does not exist
        "CC BY 5.0",  # a version that does not exist
        "CC BY-NC-something",
        "CC BY-ND-SA",  # ND and SA cannot combine
        "CC NC-SA",  # CC 1.0's licences without attribution: not a code we have
        "Some Custom License",
        "Attribution-NonCommercial-ish License",
        "http://creativecommons.org/licenses/sampling+/1.0/",
        "http://creativecommons.org/licenses/nc-sa/1.0/",
        "http://creativecommons.org/licenses/by/9.9/",
        "http://x.invalid/",
        "17",  # not a Flickr licence id
        "license",
    ],
)
def test_unknown_variants_are_none(text: str) -> None:
    assert identify(name=text) is None and identify(url=text) is None and identify(license_id=text) is None


def test_noncommercial_never_reads_as_attribution() -> None:
    for text in (
        "CC BY-NC",
        "cc-by-nc-4.0",
        "Attribution-NonCommercial",
        "https://creativecommons.org/licenses/by-nc/",
    ):
        assert normalize(name=text) == "cc-by-nc"


def test_version_comes_from_whichever_input_has_it() -> None:
    # YFCC gives the name without a version and the URL with one.
    assert identify(name="Attribution License", url="http://creativecommons.org/licenses/by/2.0/") == License(
        "cc-by", "2.0"
    )
    assert identify(license_id="cc-by", name="CC BY 4.0") == License("cc-by", "4.0")


def test_deed_url_carries_the_version() -> None:
    assert deed_url("cc-by", "4.0") == "https://creativecommons.org/licenses/by/4.0/"
    assert deed_url("cc-by-nc-sa", "2.0") == "https://creativecommons.org/licenses/by-nc-sa/2.0/"
    assert deed_url("cc-by") == "https://creativecommons.org/licenses/by/"
    assert deed_url("cc0", "1.0") == "https://creativecommons.org/publicdomain/zero/1.0/"


LIST = [
    ("arr", "All Rights Reserved", ""),
    ("nc", "Attribution-NonCommercial License", ""),
    ("nd", "CC BY-ND 4.0", ""),
    ("nc-url", "", "https://creativecommons.org/licenses/by-nc/2.0/"),
    ("custom", "Some Custom License", ""),
    ("by4", "CC BY 4.0", ""),
    ("by-url", "", "http://creativecommons.org/licenses/by/2.0/de/"),
    ("blank", "", ""),
    ("spaces", "  ", ""),
]


def _licence_run(tmp_path: Path, *extra: str) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "id": [name for name, _, _ in LIST],
            "url": [f"http://127.0.0.1:9/{name}.jpg" for name, _, _ in LIST],
            "license": [licence for _, licence, _ in LIST],
            "license_url": [url for _, _, url in LIST],
        }
    )
    table.to_csv(tmp_path / "list.csv", index=False)
    run_dir = tmp_path / "run"
    flags = ["ingest.source=urls", f"ingest.path={tmp_path / 'list.csv'}", "ingest.id_column=id", f"run.dir={run_dir}"]
    assert run_curate(*flags, *extra, "stage=ingest") == 0
    assert run_curate(*flags, *extra, "stage=license") == 0
    return read_stage(run_dir, "license").set_index("image_id")  # these ids are safe: kept as they are


def test_assumed_licence_only_fills_rows_without_licence_information(tmp_path: Path) -> None:
    rows = _licence_run(tmp_path, "ingest.assume_license=cc-by")
    outcome = {
        i: (r.license_code, r.license_status, r.license_reason, bool(r.license_assumed)) for i, r in rows.iterrows()
    }
    # Once every one of these became cc-by and was released.
    assert outcome["arr"] == ("all-rights-reserved", "rejected", "not_allowed", False)
    assert outcome["nc"] == ("cc-by-nc", "rejected", "not_allowed", False)
    assert outcome["nd"] == ("cc-by-nd", "rejected", "not_allowed", False)
    assert outcome["nc-url"] == ("cc-by-nc", "rejected", "not_allowed", False)
    assert outcome["custom"][1:] == ("rejected", "unknown_license", False)
    assert outcome["by4"] == ("cc-by", "ok", "ok", False)
    assert outcome["by-url"] == ("cc-by", "ok", "ok", False)
    assert outcome["blank"] == ("cc-by", "ok", "ok", True)
    assert outcome["spaces"] == ("cc-by", "ok", "ok", True)
    assert rows.loc["by4", "license_version"] == "4.0"
    assert rows.loc["by4", "license_attribution_url"] == "https://creativecommons.org/licenses/by/4.0/"
    assert rows.loc["by-url", "license_version"] == "2.0"
    # The source's own URL is kept when it names the same licence (it carries the jurisdiction port).
    assert rows.loc["by-url", "license_attribution_url"] == "http://creativecommons.org/licenses/by/2.0/de/"
    assert pd.isna(rows.loc["blank", "license_version"])
    assert rows.loc["blank", "license_attribution_url"] == "https://creativecommons.org/licenses/by/"
    # Ingest records what the list said, not what was assumed.
    assert rows["license_id"].isna().all()


def test_unreadable_licence_is_kept_unknown_not_assumed(tmp_path: Path) -> None:
    rows = _licence_run(tmp_path, "ingest.assume_license=cc-by", "license.keep_unknown=true")
    assert tuple(rows.loc["custom", ["license_status", "license_reason"]]) == ("ok", "unknown_kept")
    assert pd.isna(rows.loc["custom", "license_code"]) and not rows.loc["custom", "license_assumed"]


def test_changing_the_assumed_licence_reruns_the_license_stage(tmp_path: Path) -> None:
    first = _licence_run(tmp_path, "ingest.assume_license=cc-by")
    assert first.loc["blank", "license_code"] == "cc-by"
    again = _licence_run(tmp_path, "ingest.assume_license=cc-by-sa")
    assert again.loc["blank", "license_code"] == "cc-by-sa"
    assert tuple(again.loc["blank", ["license_status", "license_reason"]]) == ("rejected", "not_allowed")


def test_a_licence_value_that_raises_fails_only_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.stages.license as stage

    real = stage.identify

    def brittle(license_id=None, name=None, url=None):  # type: ignore[no-untyped-def]
        if name == "Attribution-NonCommercial License":  # the scripted surprise: a value our parser was never shown
            raise RecursionError("deep in a licence parser")
        return real(license_id, name, url)

    monkeypatch.setattr(stage, "identify", brittle)
    rows = _licence_run(tmp_path, "ingest.assume_license=cc-by")  # the in-process workers see the patch
    assert tuple(rows.loc["nc", ["license_status", "license_reason"]]) == ("failed", "internal_error")
    assert rows.loc["nc", "license_error"].startswith("RecursionError: deep in a licence parser")
    assert tuple(rows.loc["by4", ["license_status", "license_reason"]]) == ("ok", "ok")

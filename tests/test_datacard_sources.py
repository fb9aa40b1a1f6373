"""The data card of a URL list and of a plain folder states what their data holds: every licence code with its
count (unknown and assumed ones named as such, the same counts as the release manifest), attribution only as
far as the rows carry an owner, a licence URL and a photo page, and a released `hash` that follows the rule
README.md and docs/MANIFEST.md give for each source.

Each run is small (a handful of images, two shards), with every detector switched off: detection is not the
point here, and a run without models is quick."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
from conftest import NO_FILTER, encode, photo, run_curate
from faultserver import FaultServer, fault_server

from curate.datacard import Tally, render_data_card
from curate.runconfig import load_run_config

# No detector runs (NO_FILTER's bars then apply to nothing): quick, and no model weights are read.
NO_DETECTORS = ["detect.face=[]", "detect.person=[]", "detect.hand=[]", *NO_FILTER]
ASSUMED = "(assumed: ingest.assume_license)"

# The URL list: id -> (licence column, owner, photo page). CC BY in three spellings, one licence curate cannot
# read, two rows that say nothing about their licence; one row without an owner, one without a page.
LISTED: dict[str, tuple[str, str, str]] = {
    "by-version": ("CC BY 2.0", "ada", "https://photos.example/ada/1"),
    "by-name": ("Attribution License", "ben", ""),
    "by-url": ("https://creativecommons.org/licenses/by/4.0/", "cy", "https://photos.example/cy/3"),
    "custom": ("Photographer's permission", "dee", "https://photos.example/dee/4"),
    "blank": ("", "eve", "https://photos.example/eve/5"),
    "blank-anonymous": ("", "", "https://photos.example/anon/6"),
}
# The folder: relative path -> image bytes (a nested one, a PNG), and a file that is no image (fetch drops it).
FOLDER_IMAGES = {
    "a.jpg": encode(photo(200, 150, seed=1)),
    "sub/b.jpg": encode(photo(200, 150, seed=2)),
    "sub/deeper/c.png": encode(photo(160, 120, seed=3), "PNG"),
}


class Release(NamedTuple):
    run_dir: Path
    assume: str  # ingest.assume_license ("" for none)
    card: str
    manifest: pd.DataFrame  # release/v1/manifest.parquet
    metadata: pd.DataFrame  # release/v1/pass_metadata.csv, every column as text

    @property
    def kept(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "kept"]


def released(run_dir: Path, assume: str) -> Release:
    card = (run_dir / "data_cards" / "v1.md").read_text()
    # the card release writes into the run's data_cards/ is the one inside the release
    assert card == (run_dir / "release" / "v1" / "DATA_CARD.md").read_text()
    manifest = pd.read_parquet(run_dir / "release" / "v1" / "manifest.parquet")
    metadata = pd.read_csv(run_dir / "release" / "v1" / "pass_metadata.csv", dtype=str, keep_default_na=False)
    return Release(run_dir, assume, card, manifest, metadata)


def assume_flags(assume: str) -> list[str]:
    return [f"ingest.assume_license={assume}"] if assume else []


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with fault_server() as served:
        yield served


@pytest.fixture(scope="module", params=["", "cc-by"], ids=["no-assumption", "assume-cc-by"])
def url_release(
    request: pytest.FixtureRequest, server: FaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Release:
    """The URL list released, unknown licences kept; with ingest.assume_license=cc-by the rows without licence
    information (only those) are assumed CC BY."""
    assume: str = request.param
    root = tmp_path_factory.mktemp("urls")
    urls = [server.serve(f"/{i}.jpg", encode(photo(200, 150, seed=10 + k))) for k, i in enumerate(LISTED)]
    listed = pd.DataFrame(
        {
            "id": list(LISTED),
            "url": urls,
            "license": [licence for licence, _, _ in LISTED.values()],
            "owner": [owner for _, owner, _ in LISTED.values()],
            "page_url": [page for _, _, page in LISTED.values()],
        }
    )
    listed.to_csv(root / "list.csv", index=False)
    flags = [
        "pipeline=sample",
        "ingest.source=urls",
        f"ingest.path={root / 'list.csv'}",
        "ingest.id_column=id",
        "ingest.num_shards=2",
        "license.keep_unknown=true",
        *assume_flags(assume),
        *NO_DETECTORS,
    ]
    assert run_curate(f"run.dir={root / 'run'}", *flags) == 0
    return released(root / "run", assume)


@pytest.fixture(scope="module")
def folder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos") / "photos"
    for relative, data in FOLDER_IMAGES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module", params=["", "cc-by"], ids=["no-assumption", "assume-cc-by"])
def folder_release(
    request: pytest.FixtureRequest, folder_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Release:
    """The folder released as pipeline=folder does (unknown licences kept), or with ingest.assume_license=cc-by."""
    assume: str = request.param
    run_dir = tmp_path_factory.mktemp("folder") / "run"
    flags = ["pipeline=folder", f"ingest.path={folder_path}", "ingest.num_shards=2", *assume_flags(assume)]
    assert run_curate(f"run.dir={run_dir}", *flags, *NO_DETECTORS) == 0
    return released(run_dir, assume)


# --- reading the card -----------------------------------------------------------------------------------------


def section(card: str, title: str) -> str:
    """The text of the card's section with this title, up to the next section."""
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in `text`."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("|"))
    body = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :])
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


def licence_table(card: str) -> dict[str, int]:
    return {label: int(n) for label, n in table(section(card, "Licences of released images"))}


def attribution_table(card: str) -> dict[str, tuple[int, int]]:
    """released images with / without each attribution field, as the card's attribution table says."""
    text = section(card, "Licences of released images").split("Attribution as far as the data holds it", 1)[1]
    return {what: (int(n), int(without)) for what, n, without in table(text)}


def manifest_licences(release: Release) -> dict[str, int]:
    """The released rows' licences as the manifest records them, labelled the card's way: no code is "unknown",
    an assumed code says that it was assumed."""
    kept = release.kept
    labels = [
        (code if isinstance(code, str) else "unknown") + (f" {ASSUMED}" if assumed else "")
        for code, assumed in zip(kept["license_code"], kept["license_assumed"].fillna(False), strict=True)
    ]
    return dict(Counter(labels))


# The attribution fields: how the card names each, and its column in pass_metadata.csv.
FIELDS = {
    "an owner name (`unickname`)": "unickname",
    "a licence URL (`license_url`)": "license_url",
    "a photo page URL (`photo_page_url`)": "photo_page_url",
}


def held(release: Release) -> dict[str, tuple[int, int]]:
    """released images with / without each attribution field, counted in pass_metadata.csv itself."""
    rows = release.metadata
    return {what: (int((rows[c] != "").sum()), int((rows[c] == "").sum())) for what, c in FIELDS.items()}


# --- the hash rule ----------------------------------------------------------------------------------------------


def pass_hash(data: bytes) -> str:
    """PASS's `hash` as README.md and docs/MANIFEST.md define it: the md5 of the data, each of its 16 bytes in
    lower-case hex without that byte's leading zero (0x0a is "a")."""
    return "".join(format(byte, "x") for byte in hashlib.md5(data).digest())


def test_pass_hash_drops_each_bytes_leading_zero_not_only_the_first() -> None:
    # md5("a.jpg") has the byte 0x02 in the middle: the rule writes it "2", so the hash is one digit short
    assert hashlib.md5(b"a.jpg").hexdigest() == "394659692a460258b45a99f1424ea357"
    assert pass_hash(b"a.jpg") == "394659692a46258b45a99f1424ea357"


# --- URL list -------------------------------------------------------------------------------------------------


def test_url_list_card_counts_every_licence_code_unknown_and_assumed(url_release: Release) -> None:
    card = url_release.card
    if url_release.assume:  # only the rows without licence information are assumed; the unreadable one stays unknown
        expected = {"cc-by": 3, f"cc-by {ASSUMED}": 2, "unknown": 1}
    else:
        expected = {"cc-by": 3, "unknown": 3}
    assert licence_table(card) == expected
    assert manifest_licences(url_release) == expected
    assert len(url_release.kept) == sum(expected.values()) == len(LISTED)
    licences = section(card, "Licences of released images")
    unknown = expected["unknown"]
    assert f"**{unknown} released image(s) have no known licence** (`license.keep_unknown`)" in licences
    assumed_note = "released image(s) carried no licence information of their own"
    assert (f"2 {assumed_note}" in licences) == bool(url_release.assume)
    assert (assumed_note in licences) == bool(url_release.assume)


def test_url_list_card_states_attribution_only_as_far_as_the_rows_hold_it(url_release: Release) -> None:
    card = url_release.card
    released_images = len(url_release.kept)
    # the unreadable licence has no licence URL; a row without licence information has one only when assumed
    without_licence_url = 1 if url_release.assume else 3
    expected = {
        "an owner name (`unickname`)": (released_images - 1, 1),
        "a licence URL (`license_url`)": (released_images - without_licence_url, without_licence_url),
        "a photo page URL (`photo_page_url`)": (released_images - 1, 1),
    }
    assert attribution_table(card) == expected == held(url_release)
    licences = section(card, "Licences of released images")
    assert "Every released image has" not in card
    lacking = (
        "**Not every released image can be attributed from this data**: 1 lack an owner name (`unickname`); "
        f"{without_licence_url} lack a licence URL (`license_url`); 1 lack a photo page URL (`photo_page_url`)."
    )
    assert lacking in licences


def test_the_every_image_sentence_comes_only_with_rows_that_hold_every_field(url_release: Release) -> None:
    # the card of just the released rows that hold all three fields: now the claim is true, and made
    rows = url_release.manifest
    complete = (
        (rows["status"] == "kept")
        & rows["owner_name"].notna()
        & rows["license_attribution_url"].notna()
        & rows["page_url"].notna()
    )
    tally = Tally()
    tally.add(rows[complete | (rows["status"] != "kept")])
    card = render_data_card(load_run_config(url_release.run_dir), tally, 2)
    every = (
        "Every released image has an owner name (`unickname`), a licence URL (`license_url`) and a photo page URL "
        "(`photo_page_url`) in `pass_metadata.csv`."
    )
    assert every in section(card, "Licences of released images")
    assert "Not every released image" not in card and every not in url_release.card


def test_url_list_hash_is_pass_rule_over_the_download_url(url_release: Release) -> None:
    kept = url_release.kept
    assert len(kept) == len(LISTED)
    for image_url, photo_hash in zip(kept["image_url"], kept["photo_hash"], strict=True):
        assert photo_hash == pass_hash(image_url.encode("utf-8")), image_url
    metadata = url_release.metadata
    assert sorted(metadata["image_id"]) == sorted(kept["image_id"]) == sorted(LISTED)
    for released_hash, image_url in zip(metadata["hash"], metadata["image_url"], strict=True):
        assert released_hash == pass_hash(image_url.encode("utf-8")), image_url


# --- folder ---------------------------------------------------------------------------------------------------


def test_folder_card_counts_every_image_as_unknown_or_assumed(folder_release: Release) -> None:
    images = len(FOLDER_IMAGES)  # notes.txt is no image: fetch stops it, so it has no licence row in the card
    expected = {f"cc-by {ASSUMED}": images} if folder_release.assume else {"unknown": images}
    assert licence_table(folder_release.card) == expected == manifest_licences(folder_release)
    licences = section(folder_release.card, "Licences of released images")
    assert ("have no known licence" in licences) != bool(folder_release.assume)
    assert (f"{images} released image(s) carried no licence information" in licences) == bool(folder_release.assume)


def test_folder_card_says_no_image_has_an_owner_or_a_photo_page(folder_release: Release) -> None:
    images = len(FOLDER_IMAGES)
    licence_urls = images if folder_release.assume else 0  # the assumed licence's deed; none when unknown
    expected = {
        "an owner name (`unickname`)": (0, images),
        "a licence URL (`license_url`)": (licence_urls, images - licence_urls),
        "a photo page URL (`photo_page_url`)": (0, images),
    }
    assert attribution_table(folder_release.card) == expected == held(folder_release)
    lacking = [f"{images} lack an owner name (`unickname`)", f"{images} lack a photo page URL (`photo_page_url`)"]
    if not folder_release.assume:
        lacking.insert(1, f"{images} lack a licence URL (`license_url`)")
    licences = section(folder_release.card, "Licences of released images")
    assert f"**Not every released image can be attributed from this data**: {'; '.join(lacking)}." in licences
    assert "Every released image has" not in folder_release.card


def test_folder_hash_is_pass_rule_over_the_path_relative_to_the_folder(folder_release: Release) -> None:
    kept = folder_release.kept.set_index("source_ref")
    assert sorted(kept.index) == sorted(FOLDER_IMAGES)
    for relative in FOLDER_IMAGES:
        expected = pass_hash(relative.encode("utf-8"))
        assert kept.at[relative, "photo_hash"] == expected, relative
        # not the absolute file: URL, so the hash stays when the folder moves
        assert expected != pass_hash(str(kept.at[relative, "image_url"]).encode("utf-8"))
    by_id = {str(kept.at[relative, "image_id"]): relative for relative in FOLDER_IMAGES}
    metadata = folder_release.metadata
    assert sorted(metadata["image_id"]) == sorted(by_id)
    for released_hash, image_id in zip(metadata["hash"], metadata["image_id"], strict=True):
        assert released_hash == pass_hash(by_id[image_id].encode("utf-8")), image_id
    assert len(str(kept.at["a.jpg", "photo_hash"])) == 31  # its md5's byte 0x02 is written "2"

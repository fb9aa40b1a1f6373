"""Review and audit: the notebooks run headless against the sample run, scripted ledger decisions change the next
release exactly, the audit's interval matches a reference value, the HTML report loads in a real headless
browser, and no committed notebook holds outputs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from conftest import NO_SELECT, REPO, run_curate, tree_bytes
from PIL import Image

from curate.review import ledger
from curate.review.stats import wilson_interval
from curate.review.ui import ReviewBrowser

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("review") / "run"
    assert run_curate(f"run.dir={run_dir}", *NO_SELECT) == 0
    return run_dir


def manifest(run_dir: Path, version: str = "v1") -> pd.DataFrame:
    return pd.read_parquet(run_dir / "release" / version / "manifest.parquet").set_index("image_id")


def next_version(run_dir: Path) -> list[str]:
    """The README's way to apply decisions: v1 is published and never changes, so they make v2."""
    return [f"run.dir={run_dir}", "release.version=v2", f"release.previous={run_dir / 'release' / 'v1'}"]


def test_committed_notebooks_hold_no_outputs() -> None:
    assert {p.name for p in NOTEBOOKS} == {"review_flagged.ipynb", "thresholds.ipynb"}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs first"


@pytest.mark.parametrize("name", ["review_flagged.ipynb", "thresholds.ipynb"])
def test_notebooks_run_headless_and_draw_their_grids(sample_run: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    papermill.execute_notebook(str(REPO / "notebooks" / name), str(out), parameters={"run_dir": str(sample_run)},
                               kernel_name="python3", progress_bar=False, cwd=str(REPO))  # fmt: skip
    book = nbformat.read(out, as_version=4)
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, "the notebook drew no grid"
    import base64

    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[-1]))).convert("L"))
    assert grid.shape[0] >= 256 and grid.std() > 20  # thumbnails, not a blank canvas
    if name == "review_flagged.ipynb":
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_scripted_decisions_change_the_next_release_exactly(sample_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(sample_run, run_dir)
    before = manifest(run_dir)
    kept = before.index[before["status"] == "kept"].sort_values()
    face = before.index[before["reason"] == "detect:face"].sort_values()
    browser = ReviewBrowser(run_dir, reviewer="tester")
    assert set(face) <= set(browser.rows["image_id"])  # the flagged images are what the reviewer sees
    browser.decide([kept[0]], "remove", note="a hand in the corner")
    browser.decide([face[0]], "keep", note="a dog's face")
    browser.decide([face[1]], "unsure")
    browser.decide([kept[1]], "remove")
    browser.decide([kept[1]], "keep", note="changed my mind")  # the latest decision wins
    assert len(ledger.read(run_dir)) == 5  # append-only: nothing rewritten away
    published = tree_bytes(run_dir / "release" / "v1")
    assert run_curate(f"run.dir={run_dir}", *NO_SELECT) == 1  # refused: v1 is published
    assert run_curate(*next_version(run_dir), *NO_SELECT) == 0
    assert tree_bytes(run_dir / "release" / "v1") == published  # every file of v1, byte for byte
    assert manifest(run_dir).loc[kept[0], "status"] == "kept"  # v1 as it was

    after = manifest(run_dir, "v2")
    assert after.loc[kept[0], "status"] == "rejected" and after.loc[kept[0], "reason"] == "review:removed"
    assert after.loc[face[0], "status"] == "kept" and after.loc[face[0], "review_decision"] == "keep"
    assert after.loc[face[1], "reason"] == "detect:face" and after.loc[face[1], "review_decision"] == "unsure"
    assert after.loc[kept[1], "status"] == "kept" and after.loc[kept[1], "review_note"] == "changed my mind"
    changed = {kept[0], face[0]}
    others = before.index.difference(list(changed))
    assert (after.loc[others, "status"] == before.loc[others, "status"]).all()
    assert (after.loc[others, "reason"] == before.loc[others, "reason"]).all()
    card = (run_dir / "release" / "v2" / "DATA_CARD.md").read_text()
    assert "## Human review" in card and "| remove | 1 |" in card and "| keep | 2 |" in card


def test_wilson_interval_matches_the_reference_values() -> None:
    # binom::binom.confint(5, 100, method = "wilson"): 0.02154 .. 0.11175; and 0 of 10: 0 .. 0.27753
    low, high = wilson_interval(5, 100)
    assert round(low, 5) == 0.02154 and round(high, 5) == 0.11175
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 5) == 0.27753


def test_audit_sample_and_residual_rate_in_the_data_card(sample_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(sample_run, run_dir)
    published = tree_bytes(run_dir / "release" / "v1")
    assert run_curate(f"run.dir={run_dir}", "stage=audit", "audit.size=6", "audit.seed=3") == 0
    sample = pd.read_parquet(run_dir / "audit" / "v1" / "sample.parquet")
    assert len(sample) == 6 and (manifest(run_dir).loc[sample["image_id"], "status"] == "kept").all()
    browser = ReviewBrowser(run_dir, mode="audit", reviewer="auditor")
    assert sorted(browser.rows["image_id"]) == sorted(sample["image_id"])
    ids = list(sample["image_id"])
    browser.decide(ids[:1], "remove", note="person far away")
    browser.decide(ids[1:5], "keep")
    browser.decide(ids[5:], "unsure")
    assert run_curate(*next_version(run_dir), *NO_SELECT) == 0
    card = (run_dir / "release" / "v2" / "DATA_CARD.md").read_text()
    low, high = wilson_interval(1, 5)
    assert "1 of 5 checked images (a seeded random sample of 6 from" in card
    assert f"{low:.2%} – {high:.2%}" in card and "1 marked unsure" in card
    assert manifest(run_dir, "v2").loc[ids[0], "reason"] == "review:removed"
    assert manifest(run_dir, "v2").loc[ids[5], "reason"] == "review:unsure"  # unsure is never released
    assert tree_bytes(run_dir / "release" / "v1") == published  # the audit and v2 left v1 as it was


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CURATE_REQUIRE_CHROMIUM"), reason="no chromium")
def test_html_report_loads_in_a_headless_browser(sample_run: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CURATE_REQUIRE_CHROMIUM is set but chromium is not installed"
    run_dir = tmp_path / "run"
    shutil.copytree(sample_run, run_dir)
    assert run_curate(f"run.dir={run_dir}", "stage=report") == 0
    page = run_dir / "report" / "index.html"
    assert page.exists() and not list((run_dir / "release").rglob("*.html"))  # never beside the release
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shown = int(dom.split('data-images="', 1)[1].split('"', 1)[0])
    loaded = int(dom.split('data-loaded="', 1)[1].split('"', 1)[0])
    assert shown >= 10 and loaded == shown
    assert "<svg" in dom and "released" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.05  # thumbnails and text, not a blank page


def test_keyboard_entry_through_the_widgets_reaches_the_ledger(sample_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(sample_run, run_dir)
    browser = ReviewBrowser(run_dir, reviewer="keys", page_size=4)
    panel = browser.widget()
    controls, actions, _status, grid = panel.children
    assert len(grid.children) == 4  # one page of cards
    first_two = list(browser.page_rows()["image_id"][:2])
    quick, save = actions.children[2], actions.children[3]
    quick.value = "1r 2k"  # what Enter in the quick-entry box delivers
    assert browser.pending == {first_two[0]: "remove", first_two[1]: "keep"}
    save.click()
    saved = ledger.latest(run_dir)
    assert saved.loc[first_two[0], "decision"] == "remove" and saved.loc[first_two[1], "reviewer"] == "keys"
    with pytest.raises(ValueError, match="card number"):
        browser.quick_entry("9x")
    controls.children[0].value = browser.reasons()[1]  # filter by one reason: back to page 1 of that reason
    assert set(browser.page_rows()["group"]) == {browser.reasons()[1]}

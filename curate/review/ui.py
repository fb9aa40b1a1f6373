"""The review UI for notebooks: a page of thumbnails (boxes and scores drawn), filters, and keep / remove /
unsure per image, saved to the ledger. Keyboard: Tab moves between the buttons, Space picks one; or type
"1r 2k 3u" (card number + k/r/u) into the quick-entry box and press Enter. Everything a page shows is also
drawn as one static contact sheet, for exported notebooks and headless runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from curate.review import ledger
from curate.review.audit import audit_sample
from curate.review.candidates import flagged_and_borderline, scored_rows
from curate.review.thumbs import caption, contact_sheet, image_bytes, jpeg, thumbnail
from curate.runconfig import load_run_config

SORTS = {
    "score, highest first": ("top_score", False),
    "score, lowest first": ("top_score", True),
    "closest to a threshold": ("closeness", False),
    "image id": ("image_id", True),
}
KEYS = {"k": "keep", "r": "remove", "u": "unsure"}


class ReviewBrowser:
    """mode="flagged": what the filter rejected or sent to review, plus borderline keeps.
    mode="audit": the random sample of released images drawn by `stage=audit`."""

    def __init__(
        self, run_dir: str | Path, mode: str = "flagged", reviewer: str | None = None, page_size: int = 24
    ) -> None:
        if mode not in ("flagged", "audit"):
            raise ValueError("mode must be 'flagged' or 'audit'")
        self.run_dir = Path(run_dir)
        self.cfg = load_run_config(self.run_dir)
        self.mode, self.reviewer, self.page_size = mode, reviewer, page_size
        rows = scored_rows(self.cfg)
        if mode == "audit":
            sample = audit_sample(self.cfg)
            self.rows = rows[rows["image_id"].isin(sample["image_id"])].copy()
            self.rows["group"] = "audit"
        else:
            self.rows = flagged_and_borderline(rows, self.cfg.review.borderline_margin)
        self.reason, self.score_range, self.sort, self.page = "all", (0.0, 1.0), next(iter(SORTS)), 0
        self.pending: dict[str, str] = {}

    # -- what is shown ---------------------------------------------------------------------------------------

    def reasons(self) -> list[str]:
        return ["all", *sorted(self.rows["group"].unique())]

    def filtered(self) -> pd.DataFrame:
        rows = self.rows
        if self.reason != "all":
            rows = rows[rows["group"] == self.reason]
        low, high = self.score_range
        rows = rows[(rows["top_score"] >= low) & (rows["top_score"] <= high)]
        column, ascending = SORTS[self.sort]
        return rows.sort_values([column, "image_id"], ascending=[ascending, True], kind="stable")

    def pages(self) -> int:
        return max(1, -(-len(self.filtered()) // self.page_size))

    def page_rows(self) -> pd.DataFrame:
        start = self.page * self.page_size
        return self.filtered().iloc[start : start + self.page_size]

    def thumbnails(self, rows: pd.DataFrame) -> list[tuple[str, Any, str]]:
        blobs = image_bytes(self.run_dir, rows)
        out = []
        for _, row in rows.iterrows():
            if row["image_id"] in blobs:
                out.append((row["image_id"], thumbnail(blobs[row["image_id"]], row), caption(row)))
        return out

    def sheet(self) -> Any:
        """The current page as one contact sheet (a PIL image), numbered as the cards are."""
        items = [(image, f"{n + 1}. {text}") for n, (_, image, text) in enumerate(self.thumbnails(self.page_rows()))]
        return contact_sheet(items)

    # -- decisions -------------------------------------------------------------------------------------------

    def decide(self, image_ids: Sequence[str], decision: str, note: str = "") -> int:
        """Record a decision for these images in the ledger (the scripted path the widgets also use)."""
        return ledger.append(self.run_dir, [(i, decision) for i in image_ids], reviewer=self.reviewer, note=note)

    def quick_entry(self, text: str) -> dict[str, str]:
        """'1r 2k 3u' -> {image_id: decision} for the cards of the current page."""
        ids = list(self.page_rows()["image_id"])
        chosen: dict[str, str] = {}
        for token in text.replace(",", " ").split():
            number, key = token[:-1], token[-1:].lower()
            if not number.isdigit() or key not in KEYS or not 1 <= int(number) <= len(ids):
                raise ValueError(f"{token!r}: use card number + k (keep), r (remove) or u (unsure), e.g. 3r")
            chosen[ids[int(number) - 1]] = KEYS[key]
        return chosen

    def save_pending(self, note: str = "") -> int:
        by_decision: dict[str, list[str]] = {}
        for image_id, decision in self.pending.items():
            by_decision.setdefault(decision, []).append(image_id)
        saved = sum(self.decide(ids, decision, note) for decision, ids in sorted(by_decision.items()))
        self.pending.clear()
        return saved

    # -- widgets ---------------------------------------------------------------------------------------------

    def widget(self) -> Any:
        import ipywidgets as w

        reason = w.Dropdown(options=self.reasons(), value=self.reason, description="reason")
        scores = w.FloatRangeSlider(value=self.score_range, min=0.0, max=1.0, step=0.01, description="score")
        sort = w.Dropdown(options=list(SORTS), value=self.sort, description="sort")
        previous, following = w.Button(description="◀ page"), w.Button(description="page ▶")
        # continuous_update=False: the value changes (and on_quick runs) when Enter is pressed or focus leaves
        quick = w.Text(placeholder="quick entry: 1r 2k 3u, Enter", layout=w.Layout(width="320px"),
                       continuous_update=False)  # fmt: skip
        save = w.Button(description="save decisions", button_style="success")
        status = w.HTML()
        grid = w.GridBox(layout=w.Layout(grid_template_columns="repeat(6, 270px)"))

        saved = self.rows.set_index("image_id")["review_decision"]

        def render(*_: Any) -> None:
            cards = []
            for n, (image_id, image, text) in enumerate(self.thumbnails(self.page_rows())):
                current = self.pending.get(image_id) or saved.get(image_id)
                buttons = w.ToggleButtons(options=list(ledger.DECISIONS), value=current if pd.notna(current) else None,
                                          style={"button_width": "76px"})  # fmt: skip
                buttons.observe(lambda change, i=image_id: self.pending.__setitem__(i, change["new"]), names="value")
                label = w.HTML(f"<b>{n + 1}</b> <code>{image_id}</code><br>{text}")
                cards.append(w.VBox([w.Image(value=jpeg(image), format="jpeg"), label, buttons]))
            grid.children = cards
            status.value = (
                f"page {self.page + 1} / {self.pages()} · {len(self.filtered())} images · unsaved {len(self.pending)}"
            )

        def refilter(*_: Any) -> None:
            self.reason, self.score_range, self.sort, self.page = reason.value, scores.value, sort.value, 0
            render()

        def turn(step: int) -> None:
            self.page = min(max(0, self.page + step), self.pages() - 1)
            render()

        def on_quick(_: Any) -> None:
            if not quick.value.strip():
                return
            try:
                self.pending.update(self.quick_entry(quick.value))
                quick.value = ""
            except ValueError as err:
                status.value = f"<span style='color:#b00'>{err}</span>"
                return
            render()

        def on_save(_: Any) -> None:
            saved = self.save_pending()
            render()
            status.value += f" · saved {saved} to {ledger.ledger_path(self.run_dir)}"

        for control in (reason, scores, sort):
            control.observe(refilter, names="value")
        previous.on_click(lambda _: turn(-1))
        following.on_click(lambda _: turn(1))
        quick.observe(on_quick, names="value")
        save.on_click(on_save)
        render()
        return w.VBox([w.HBox([reason, scores, sort]), w.HBox([previous, following, quick, save]), status, grid])

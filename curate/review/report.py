"""A static HTML report for reviewers without Jupyter: the funnel as a chart, and contact sheets of the flagged
and borderline images per reason and score band, with the detectors' boxes drawn.

It is written to <run.dir>/report/ (index.html + thumbs/). It shows images of people, so it never goes into a
release folder or anywhere else.
"""

from __future__ import annotations

import html
from pathlib import Path

from curate.config import CurateConfig
from curate.funnel import funnel_counts as counts_of
from curate.funnel import release_funnel
from curate.io.atomic import atomic_open
from curate.review.candidates import flagged_and_borderline, scored_rows
from curate.review.thumbs import caption, image_bytes, jpeg, thumbnail

BANDS = [(0.0, 0.5, "score < 0.5"), (0.5, 0.8, "0.5 ≤ score < 0.8"), (0.8, 1.01, "score ≥ 0.8")]
PER_SHEET = 24
LABEL_WIDTH, LABEL_BAR = 430, 420  # pixels of the funnel chart's label column and of its longest bar

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>curate report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
.sheet {{ display: grid; grid-template-columns: repeat(auto-fill, 200px); gap: 8px; margin-bottom: 24px; }}
figure {{ margin: 0; }} figure img {{ width: 200px; height: 200px; object-fit: contain; background: #eee; }}
figcaption {{ font-size: 11px; width: 200px; overflow-wrap: anywhere; }}
.bar {{ fill: #3b7dd8; }} .warn {{ color: #a00; }}
</style></head>
<body data-images="{count}">
<h1>curate report: {name} {version}</h1>
<p class="warn">This page shows images that were flagged because they may show people. Keep it inside the run
directory.</p>
<h2>Funnel</h2>
{funnel}
<h2>Flagged and borderline images</h2>
<p>Red boxes: faces; blue boxes: persons; scores as the detectors gave them. At most {per_sheet} images per sheet,
highest scores first.</p>
{sheets}
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.loaded = String(loaded);
  document.title = "curate report: " + loaded + "/" + images.length + " images loaded";
}});
</script>
</body></html>
"""


def funnel_counts(cfg: CurateConfig) -> list[tuple[str, int]]:
    """(step, images left) of the release's funnel: the same counts as its data card (curate.funnel)."""
    counter = release_funnel(cfg)
    return [] if counter is None else counts_of(counter)


def funnel_svg(counts: list[tuple[str, int]]) -> str:
    if not counts:
        return "<p>No release yet: run stage=release for the funnel.</p>"
    top = max(n for _, n in counts) or 1
    bars = []
    for k, (label, n) in enumerate(counts):
        # the labels are the data card's own (curate.funnel.STEPS): a wide column keeps the longest readable
        y, width = 8 + k * 28, max(1, round(LABEL_BAR * n / top))
        bars.append(f'<text x="0" y="{y + 15}">{html.escape(label)}</text>'
                    f'<rect class="bar" x="{LABEL_WIDTH}" y="{y}" width="{width}" height="20"/>'
                    f'<text x="{LABEL_WIDTH + 6 + width}" y="{y + 15}">{n}</text>')  # fmt: skip
    size = f'width="{LABEL_WIDTH + LABEL_BAR + 70}" height="{16 + 28 * len(counts)}"'
    return f'<svg {size} role="img" aria-label="funnel">{"".join(bars)}</svg>'


def write_report(cfg: CurateConfig) -> Path:
    out = Path(cfg.run.dir) / "report"
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    rows = flagged_and_borderline(scored_rows(cfg), cfg.review.borderline_margin)
    sheets, shown = [], 0
    for group in sorted(rows["group"].unique()):
        for low, high, band in BANDS:
            chosen = rows[(rows["group"] == group) & (rows["top_score"] >= low) & (rows["top_score"] < high)]
            if chosen.empty:
                continue
            chosen = chosen.sort_values(["top_score", "image_id"], ascending=[False, True]).head(PER_SHEET)
            blobs = image_bytes(cfg.run.dir, chosen)
            figures = []
            for _, row in chosen.iterrows():
                if row["image_id"] not in blobs:
                    continue
                name = f"thumbs/{row['image_id']}.jpg"
                (out / name).write_bytes(jpeg(thumbnail(blobs[row["image_id"]], row)))
                figures.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(row["image_id"])}">'
                               f"<figcaption>{html.escape(row['image_id'])}<br>{html.escape(caption(row))}"
                               f"</figcaption></figure>")  # fmt: skip
            shown += len(figures)
            total = int(((rows["group"] == group) & rows["top_score"].between(low, high, inclusive="left")).sum())
            sheets.append(
                f"<h3>{html.escape(group)} · {band} ({total})</h3><div class='sheet'>{''.join(figures)}</div>"
            )
    page = PAGE.format(
        name=html.escape(cfg.release.name),
        version=html.escape(cfg.release.version),
        count=shown,
        funnel=funnel_svg(funnel_counts(cfg)),
        sheets="\n".join(sheets) or "<p>Nothing was flagged.</p>",
        per_sheet=PER_SHEET,
    )
    with atomic_open(out / "index.html", "w") as handle:
        handle.write(page)
    return out / "index.html"

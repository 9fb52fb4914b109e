"""The page of an editor comparison: each arm's identity and verifier pass rates, failed checks per kind, speed
and memory, per arm and per prompt category, and the arms' edits of the same input side by side (one grid per
category)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.report.format import cell
from flenwheel.report.grids import image_grid
from flenwheel.report.page import Section, render_html
from flenwheel.report.plots import arm_stats, pass_rate_bars, similarity_histogram

COLUMNS = ("n", "pass_rate", "mean_similarity", "verifier_pass_rate", "seconds_per_edit", "peak_gib")
CHECKS_NOTE = (
    "verifier_pass_rate: the share of edits that passed every check; failed:KIND: how many edits failed that kind "
    "of check (preservation outside the edit region, change inside it, faces, each critic question); '-' where "
    "no edit was asked it (angles keep nothing in place). docs/verification.md."
)


def _table(metrics: dict[str, dict[str, float]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per key; the failed-check columns of every kind any of them was checked for, critic ones last."""
    kinds = sorted(
        {c for k in keys for c in metrics.get(k, {}) if c.startswith("failed:")},
        key=lambda c: (c.startswith("failed:critic:"), c),
    )
    return [{"arm": k, **{c: metrics[k].get(c) for c in (*COLUMNS, *kinds)}} for k in keys if k in metrics]


def comparison_report(
    out: Path,
    title: str,
    summary: list[str],
    arms: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    metrics: dict[str, dict[str, float]],
    images_dir: Path,
    sources: dict[str, Path],
) -> Path:
    """Write ``out/index.html``. ``arms``: (arm key in ``rows``, label); ``sources``: input image per source id."""
    stats = [arm_stats(label, [r for r in rows if r["arm"] == arm]) for arm, label in arms]
    figures = [
        (pass_rate_bars(stats, out / "pass_rates.png"), "identity pass rate of the edits (dashed: the 70% target)"),
        (similarity_histogram(stats, [], out / "similarity.png"), "identity similarity of the edits"),
    ]
    by_job = {(r["arm"], r["source_id"], r["prompt_id"], r["seed"]): r for r in rows}
    jobs = sorted({(r["category"], r["source_id"], r["prompt_id"], r["seed"]) for r in rows})
    grids = []
    for category in sorted({j[0] for j in jobs}):
        tiles: list[tuple[Path, str]] = []
        for _, source_id, prompt_id, seed in (j for j in jobs if j[0] == category):
            tiles.append((sources[source_id], f"input {source_id[:8]} · {prompt_id} · seed {seed}"))
            for arm, label in arms:
                r = by_job.get((arm, source_id, prompt_id, seed))
                if r is None:
                    continue
                check = ""
                if r.get("verified") is not None:
                    check = " · verified" if r["verified"] else f" · failed {', '.join(r['failed_checks'] or ['-'])}"
                tiles.append(
                    (images_dir / r["file"], f"{label}: {r['verdict']} {cell(r['similarity'], 'similarity')}{check}")
                )
        grid = image_grid(tiles, out / f"side_by_side_{category}.png", columns=1 + len(arms))
        grids.append((grid, f"{category}: the input, then {', '.join(label for _, label in arms)} (same seed)"))
    categories = sorted({r["category"] for r in rows})
    checked = any("verifier_pass_rate" in m for m in metrics.values())
    sections = [
        Section("Per arm", [CHECKS_NOTE] if checked else [], figures, _table(metrics, [a for a, _ in arms])),
        Section(
            "Per arm and prompt category", table=_table(metrics, [f"{a}:{c}" for a, _ in arms for c in categories])
        ),
        Section("Same input, prompt and seed, side by side", images=grids),
    ]
    return render_html(title, summary, sections, out / "index.html")

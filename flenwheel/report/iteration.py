"""The HTML report of a flywheel iteration, built from the catalog alone, and its gist for Prefect artifacts."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import CoverageSettings, ReviewSettings
from flenwheel.report.checks import enrichment_section, review_section
from flenwheel.report.coverage import coverage_sections
from flenwheel.report.format import cell
from flenwheel.report.grids import image_grid
from flenwheel.report.page import Section, render_html
from flenwheel.report.plots import (
    TARGET_PASS_RATE,
    arm_stats,
    composition_chart,
    pass_rate_bars,
    similarity_histogram,
    training_curves,
)


@dataclass
class IterationReport:
    """What a flywheel iteration's report says; the flow turns it into Prefect artifacts."""

    path: Path
    markdown: str
    table: list[dict[str, Any]]
    metrics: dict[str, float]
    target_met: bool


def _lora_curves(ws_root: Path, lora_path: str | None) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(loss per step, identity pass rate per checkpoint) from a LoRA's result.json."""
    if not lora_path:
        return [], []
    result = ws_root / Path(lora_path).parent / "result.json"
    if not result.exists():
        return [], []
    raw = json.loads(result.read_text())
    checkpoints = sorted((s["step"], s["pass_rate"] or 0.0) for s in raw["scores"] if s["pass_rate"] is not None)
    return [tuple(x) for x in raw["losses"]], checkpoints  # type: ignore[misc]


def _grid_tiles(scores: list[dict[str, Any]], best: bool, n: int) -> list[tuple[Path, str]]:
    with_sim = [s for s in scores if s["similarity"] is not None]
    without = [s for s in scores if s["similarity"] is None]
    ordered = sorted(with_sim, key=lambda s: s["similarity"], reverse=best)
    ordered = ordered if best else [*without, *ordered]  # no face at all is the worst outcome
    return [
        (Path(s["abs_path"]), f"{s['verdict']} {cell(s['similarity'], 'similarity')} {s['image_id'][:8]}")
        for s in ordered[:n]
    ]


def iteration_report(
    root: Path,
    catalog: Catalog,
    character: str,
    number: int,
    review: ReviewSettings | None = None,
    coverage: CoverageSettings | None = None,
) -> IterationReport:
    """Write ``<root>/reports/<character>/iteration-<number>/index.html`` from the catalog and return its gist.

    Compares the identity pass rate of the synthetic images of this iteration's LoRA with the previous
    iteration's (or with the enrichment candidates for the first one) and says whether the 70% target is met;
    shows coverage per dataset version with its gaps and what aimed enrichment went after (docs/coverage.md),
    enrichment per prompt (checks, retries, failure examples) and who decided the review gates.
    """
    out = root / "reports" / character / f"iteration-{number}"
    iterations = [r for r in catalog.iterations(character) if r["number"] <= number]
    loras = {r["lora_id"]: r for r in catalog.loras_of(character)}
    enrich_ids = catalog.image_ids(character, ("edit", "augment"))

    def scored(ids: Sequence[str]) -> list[dict[str, Any]]:
        return [{**s, "abs_path": str(root / s["path"])} for s in catalog.latest_scores(ids)]

    arms_scores: dict[str, list[dict[str, Any]]] = {"enrichment": scored(enrich_ids)}
    for it in iterations:
        if it["lora_id"]:
            arms_scores[f"synthetic v{it['number']}"] = scored(catalog.generated_with(it["lora_id"]))
    arms = [arm_stats(name, rows) for name, rows in arms_scores.items()]
    thresholds = [s["threshold"] for rows in arms_scores.values() for s in rows if s["threshold"] is not None]
    current = arms[-1]
    previous = arms[-2] if len(arms) > 1 else None
    rate = current.pass_rate
    target_met = rate is not None and rate >= TARGET_PASS_RATE

    figures = [
        (pass_rate_bars(arms, out / "pass_rates.png"), "identity pass rate by group (dashed: the 70% target)"),
        (similarity_histogram(arms, thresholds, out / "similarity.png"), "identity similarity by group"),
    ]
    grids = []
    for name in [current.name] + (["enrichment"] if current.name != "enrichment" else []):
        rows = arms_scores[name]
        best_caption = f"{name}: best by similarity" + (
            "" if any(r["similarity"] is not None for r in rows) else " (no image had a face to compare)"
        )
        grids.append(
            (image_grid(_grid_tiles(rows, True, 12), out / f"best-{name.replace(' ', '-')}.png"), best_caption)
        )
        grids.append(
            (
                image_grid(_grid_tiles(rows, False, 12), out / f"worst-{name.replace(' ', '-')}.png"),
                f"{name}: worst by similarity (no face first)",
            )
        )

    by_origin: dict[str, dict[str, int]] = {}
    by_category: dict[str, dict[str, int]] = {}
    for it in iterations:
        version = it["dataset_version"]
        if not version:
            continue
        rows = catalog.version_composition(version)
        label = version.split("@")[-1]
        for r in rows:
            by_origin.setdefault(label, {}).setdefault(r["origin"], 0)
            by_origin[label][r["origin"]] += 1
            by_category.setdefault(label, {}).setdefault(r["category"], 0)
            by_category[label][r["category"]] += 1
    figures.append(
        (
            composition_chart(by_origin, out / "composition_origin.png", "dataset versions by origin"),
            "dataset composition by origin",
        )
    )
    figures.append(
        (
            composition_chart(by_category, out / "composition_category.png", "by prompt category"),
            "dataset composition by prompt category",
        )
    )
    losses, checkpoints = {}, {}
    for it in iterations:
        if it["lora_id"] in loras:
            loss, ckpt = _lora_curves(root, loras[it["lora_id"]]["path"])
            losses[f"LoRA v{it['number']}"], checkpoints[f"LoRA v{it['number']}"] = loss, ckpt
    figures.append(
        (training_curves(losses, checkpoints, out / "training.png"), "training loss and checkpoint identity")
    )

    table = [
        {
            "group": a.name,
            "images": a.n,
            "passed": a.passed,
            "pass_rate": a.pass_rate,
            "mean_similarity": a.mean_similarity,
            **{f"verdict {k}": v for k, v in sorted(a.verdicts.items())},
        }
        for a in arms
    ]
    cols = sorted({k for row in table for k in row}, key=lambda k: (not k.startswith(("group", "images", "pass")), k))
    table = [{c: row.get(c, 0 if c.startswith("verdict") else None) for c in cols} for row in table]
    metrics = {f"{k}": v for k, v in current.as_metrics().items()}
    if previous is not None and previous.pass_rate is not None and rate is not None:
        metrics["pass_rate_change"] = rate - previous.pass_rate
    metrics["target_met"] = float(target_met)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    change = (
        f"{previous.name} {pct(previous.pass_rate)} → {current.name} {pct(rate)}"
        if previous
        else f"{current.name} {pct(rate)}"
    )
    verdict = "met" if target_met else "not met"
    summary = [
        f"Identity pass rate: {html.escape(change)}.",
        f"Consistency target {TARGET_PASS_RATE:.0%}: <span class='{'ok' if target_met else 'miss'}'>{verdict}</span>.",
        "Dataset versions: "
        + html.escape(", ".join(it["dataset_version"] or "-" for it in iterations))
        + "; LoRAs: "
        + html.escape(", ".join(it["lora_id"] or "-" for it in iterations))
        + ".",
    ]
    if current.n and not current.similarities:
        summary.append(
            "No face was found in any synthetic image: expected with the random-weight cpu-tiny models, "
            "whose outputs are noise by design."
        )
    sections = [
        Section("Identity by group", images=figures[:2], table=table),
        Section("Best and worst images", images=grids),
        Section("Dataset composition", images=figures[2:4]),
        *coverage_sections(
            catalog,
            character,
            [it["dataset_version"] for it in iterations if it["dataset_version"]],
            coverage or CoverageSettings(),
            out,
        ),
        Section("Training", images=figures[4:]),
    ]
    extra = (
        enrichment_section(root, catalog, character, out),
        review_section(catalog, character, review or ReviewSettings()),
        _editor_section(root, catalog, character),
    )
    sections += [s for s in extra if s is not None]
    path = render_html(f"{character}: flywheel iteration {number}", summary, sections, out / "index.html")
    markdown = (
        f"## {character}: flywheel iteration {number}\n\n"
        f"- identity pass rate: {change}\n- target {TARGET_PASS_RATE:.0%}: **{verdict}**\n"
        f"- report: `{path}`\n"
    )
    return IterationReport(path, markdown, table, metrics, target_met)


def _editor_section(root: Path, catalog: Catalog, character: str) -> Section | None:
    """Flywheel 2 in the iteration report: every evaluated editor LoRA of the character, base vs LoRA."""
    rows = catalog.edit_evaluations(character)
    if not rows:
        return None
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["lora_id"], {"editor LoRA": r["lora_id"]})[f"{r['arm']} {r['name']}"] = r["value"]
    columns = (
        "editor LoRA",
        "base n",
        "base pass_rate",
        "lora pass_rate",
        "base mean_similarity",
        "lora mean_similarity",
    )
    table = [{k: v.get(k) for k in columns} for v in values.values()]
    grids = []
    for lora_id in values:
        for grid in sorted((root / "reports" / character / f"edit-eval-{lora_id}").glob("side_by_side_*.png")):
            category = grid.stem.removeprefix("side_by_side_")
            grids.append((grid, f"{lora_id}, {category}: input, base, base + LoRA (same prompt and seed)"))
    return Section(
        "Editor LoRA (flywheel 2): base editor vs base + LoRA on held-out photos",
        ["Pass rate and mean similarity of the same edits with and without the character's editor LoRA."],
        grids,
        table,
    )

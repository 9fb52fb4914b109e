"""The HTML report of a flywheel iteration, built from the catalog alone, and its gist for Prefect artifacts."""

from __future__ import annotations

import html
import json
import re
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
from flenwheel.report.licences import iteration_licences, licence_section, licence_summary
from flenwheel.report.page import Section, render_html
from flenwheel.report.plots import (
    TARGET_PASS_RATE,
    arm_stats,
    checkpoint_chart,
    composition_chart,
    pass_rate_bars,
    similarity_histogram,
    training_curves,
)

SAMPLE_COLUMNS = (
    "judged", "good_rate", "copy_rate", "weak_rate", "no_face_rate", "multi_face_rate", "mean_likeness", "adherence",
)  # fmt: skip


@dataclass
class IterationReport:
    """What a flywheel iteration's report says; the flow turns it into Prefect artifacts."""

    path: Path
    markdown: str
    table: list[dict[str, Any]]
    metrics: dict[str, float]
    target_met: bool


def _lora_record(ws_root: Path, lora_path: str | None) -> dict[str, Any]:
    """A LoRA's result.json (losses, checkpoint scores, chosen step and why), or {} when there is none."""
    if not lora_path:
        return {}
    result = ws_root / Path(lora_path).parent / "result.json"
    return json.loads(result.read_text()) if result.exists() else {}


def _lora_curves(record: dict[str, Any]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(loss per step, identity pass rate per checkpoint) from a LoRA's result.json."""
    if not record:
        return [], []
    scores = record["scores"]
    checkpoints = sorted((s["step"], s["pass_rate"] or 0.0) for s in scores if s["pass_rate"] is not None)
    return [tuple(x) for x in record["losses"]], checkpoints  # type: ignore[misc]


def _samples_line(name: str, summary: dict[str, Any]) -> str:
    if not summary.get("judged"):
        return f"{name} not judged"
    adherence = "not measured" if summary["adherence"] is None else cell(summary["adherence"], "adherence")
    return (
        f"{name} good {cell(summary['good_rate'], 'good_rate')}, copies {cell(summary['copy_rate'], 'copy_rate')}, "
        f"adherence {adherence}"
    )


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
    compares them as samples too (good rate, copies, adherence: docs/evaluation.md), shows each LoRA's checkpoints
    with the exported one and why, coverage per dataset version with its gaps and what aimed enrichment went after
    (docs/coverage.md), enrichment per prompt (checks, retries, failure examples) and who decided the review gates.
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
    # the synthetic groups judged as samples (docs/evaluation.md): verdict rates, likeness, adherence
    samples = {
        name: catalog.sample_summary([r["image_id"] for r in rows])
        for name, rows in arms_scores.items()
        if name != "enrichment"
    }
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
    losses, checkpoints, series, chosen, reasons = {}, {}, {}, {}, []
    for it in iterations:
        if it["lora_id"] in loras:
            name = f"LoRA v{it['number']}"
            record = _lora_record(root, loras[it["lora_id"]]["path"])
            losses[name], checkpoints[name] = _lora_curves(record)
            if any(x.get("composite") is not None for x in record.get("scores", [])):
                series[name], chosen[name] = record["scores"], record["chosen_step"]
            if record.get("choice"):
                reasons.append(f"{name} ({it['lora_id']}), exported {record['choice']}.")
    figures.append(
        (training_curves(losses, checkpoints, out / "training.png"), "training loss and checkpoint identity")
    )
    if series:
        figures.append(
            (
                checkpoint_chart(series, chosen, out / "checkpoints.png"),
                "samples per checkpoint: likeness, copies, good samples and prompt adherence (ringed: exported)",
            )
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
    now_samples = samples.get(current.name, {})
    before_samples = samples.get(previous.name, {}) if previous is not None else {}
    for key in ("good_rate", "copy_rate", "weak_rate", "mean_likeness", "adherence"):
        if now_samples.get(key) is not None:
            metrics[key] = float(now_samples[key])
            if before_samples.get(key) is not None and key != "mean_likeness":
                metrics[f"{key}_change"] = float(now_samples[key]) - float(before_samples[key])
    sample_table = [{"group": name, **{c: summary.get(c) for c in SAMPLE_COLUMNS}} for name, summary in samples.items()]
    copies = len(catalog.failing([r["image_id"] for r in arms_scores[current.name]], "copy")) if samples else 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    change = (
        f"{previous.name} {pct(previous.pass_rate)} → {current.name} {pct(rate)}"
        if previous
        else f"{current.name} {pct(rate)}"
    )
    verdict = "met" if target_met else "not met"
    sample_change = " → ".join(
        _samples_line(name, samples[name])
        for name in samples
        if name in (current.name, previous.name if previous else None)
    )
    summary = [f"Identity pass rate: {html.escape(change)}."]
    if samples:
        summary.append(
            f"Samples (docs/evaluation.md): {html.escape(sample_change)}; {copies} of {current.name}'s images copy "
            "a training image (failed check copy: never admitted to the next version)."
        )
    summary += [
        f"Consistency target {TARGET_PASS_RATE:.0%}: <span class='{'ok' if target_met else 'miss'}'>{verdict}</span>.",
        "Dataset versions: "
        + html.escape(", ".join(it["dataset_version"] or "-" for it in iterations))
        + "; LoRAs: "
        + html.escape(", ".join(it["lora_id"] or "-" for it in iterations))
        + ".",
    ]
    last = iterations[-1] if iterations else {}
    licences = iteration_licences(catalog, last.get("dataset_version"), last.get("lora_id"))
    summary += licence_summary(licences)
    if current.n and not current.similarities:
        summary.append(
            "No face was found in any synthetic image: expected with the random-weight cpu-tiny models, "
            "whose outputs are noise by design."
        )
    sections = [Section("Identity by group", images=figures[:2], table=table)]
    if samples:
        sections.append(
            Section(
                "Synthetic images as samples: good, copies, adherence",
                [
                    "Each generated image judged as a sample against the version its LoRA was trained on "
                    "(docs/evaluation.md): copy — it reproduces a training image; weak — its face is below the "
                    "likeness floor; adherence — the share of its prompt's checks the critic passed ('-': not "
                    "measured)."
                ],
                table=sample_table,
            )
        )
    sections += [
        Section("Best and worst images", images=grids),
        Section("Dataset composition", images=figures[2:4]),
        *coverage_sections(
            catalog,
            character,
            [it["dataset_version"] for it in iterations if it["dataset_version"]],
            coverage or CoverageSettings(),
            out,
        ),
        Section("Training", reasons, images=figures[4:]),
    ]
    extra = (
        enrichment_section(root, catalog, character, out),
        review_section(catalog, character, review or ReviewSettings()),
        _editor_section(root, catalog, character),
        licence_section(licences, out),
    )
    sections += [s for s in extra if s is not None]
    path = render_html(f"{character}: flywheel iteration {number}", summary, sections, out / "index.html")
    markdown = (
        f"## {character}: flywheel iteration {number}\n\n"
        f"- identity pass rate: {change}\n- target {TARGET_PASS_RATE:.0%}: **{verdict}**\n"
        f"- samples: {sample_change or '-'}\n- report: `{path}`\n"
        + "".join(f"- {html.unescape(re.sub('<[^>]+>', '', line))}\n" for line in licence_summary(licences))
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

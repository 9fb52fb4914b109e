"""Metrics, plots, image grids and the HTML report of a flywheel iteration.

Everything here reads the catalog (and the stored images) and writes files under
``<root>/reports/<character>/``; nothing is recomputed that the catalog already knows. Plots are PNG files
made with matplotlib's Agg backend, grids are PNG files made with Pillow, and the page is one
self-contained HTML file that links them with relative paths.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are made by flows and CI
import matplotlib.pyplot as plt
from PIL import Image, ImageDraw

from flenwheel.catalog import Catalog

TARGET_PASS_RATE = 0.70  # the product's consistency target: share of outputs that keep the identity


# --------------------------------------------------------------------------- metrics


@dataclass
class ArmStats:
    """Identity outcomes of one group of images (e.g. synthetic images of LoRA v2)."""

    name: str
    n: int = 0
    passed: int = 0
    similarities: list[float] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.n if self.n else None

    @property
    def mean_similarity(self) -> float | None:
        return sum(self.similarities) / len(self.similarities) if self.similarities else None

    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"n": float(self.n)}
        if self.pass_rate is not None:
            out["pass_rate"] = self.pass_rate
        if self.mean_similarity is not None:
            out["mean_similarity"] = self.mean_similarity
        return out


def arm_stats(name: str, scores: Sequence[dict[str, Any]]) -> ArmStats:
    """``scores``: rows with ``verdict`` and ``similarity`` (one per image)."""
    stats = ArmStats(name)
    for s in scores:
        stats.n += 1
        stats.verdicts[s["verdict"]] = stats.verdicts.get(s["verdict"], 0) + 1
        stats.passed += s["verdict"] == "pass"
        if s.get("similarity") is not None:
            stats.similarities.append(float(s["similarity"]))
    return stats


# --------------------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def similarity_histogram(arms: Sequence[ArmStats], thresholds: Sequence[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    values = [v for a in arms for v in a.similarities]
    lo, hi = (min([*values, 0.0]), max([*values, 1.0])) if values else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)]
    for arm in arms:
        if arm.similarities:
            rate = f"{arm.pass_rate:.0%}" if arm.pass_rate is not None else "-"
            ax.hist(arm.similarities, bins=bins, alpha=0.55, label=f"{arm.name} (n={arm.n}, pass {rate})")
    for t in sorted(set(round(t, 3) for t in thresholds)):
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("identity similarity to the reference set (dashed: threshold)")
    ax.set_ylabel("images")
    if any(a.similarities for a in arms):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no face found in any image", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def pass_rate_bars(arms: Sequence[ArmStats], path: Path, target: float = TARGET_PASS_RATE) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [a.name for a in arms]
    rates = [(a.pass_rate or 0.0) * 100 for a in arms]
    bars = ax.bar(names, rates, color=["#4c72b0" if r >= target * 100 else "#dd8452" for r in rates])
    ax.axhline(target * 100, color="black", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    for bar, arm in zip(bars, arms, strict=True):
        label = f"{arm.passed}/{arm.n}" if arm.n else "no images"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("identity pass rate (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def composition_chart(counts: dict[str, dict[str, int]], path: Path, title: str) -> Path:
    """Stacked bars: for each dataset version, images by group (origin or prompt category)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    versions = list(counts)
    groups = sorted({g for c in counts.values() for g in c})
    bottom = [0] * len(versions)
    for g in groups:
        vals = [counts[v].get(g, 0) for v in versions]
        ax.bar(versions, vals, bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    if groups:
        ax.legend(fontsize=8, ncol=min(4, len(groups)))
    return _save(fig, path)


def training_curves(
    losses: dict[str, list[tuple[int, float]]], checkpoints: dict[str, list[tuple[int, float]]], path: Path
) -> Path:
    """Loss per step and identity pass rate per checkpoint, one line per LoRA."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, pts in losses.items():
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    for name, pts in checkpoints.items():
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] * 100 for p in pts], marker="o", label=name)
    target = f"target {TARGET_PASS_RATE:.0%}"
    ax2.axhline(TARGET_PASS_RATE * 100, color="black", linestyle="--", linewidth=1, label=target)
    ax2.set_xlabel("checkpoint step")
    ax2.set_ylabel("sample identity pass rate (%)")
    ax2.set_ylim(-5, 105)
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- grids


def image_grid(tiles: Sequence[tuple[Path | Image.Image, str]], path: Path, tile: int = 192, columns: int = 6) -> Path:
    """A labelled grid of images (label under each tile)."""
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, math.ceil(len(tiles) / columns))
    label_h = 28
    grid = Image.new("RGB", (columns * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (src, label) in enumerate(tiles):
        img = src if isinstance(src, Image.Image) else Image.open(src)
        img = img.convert("RGB")
        img.thumbnail((tile, tile))
        x, y = (i % columns) * tile, (i // columns) * (tile + label_h)
        grid.paste(img, (x + (tile - img.width) // 2, y + (tile - img.height) // 2))
        for n, line in enumerate(_wrap(label, tile // 6)[:2]):
            draw.text((x + 3, y + tile + 2 + 12 * n), line, fill="black")
    if not tiles:
        draw.text((10, 10), "no images", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return [*lines, cur] if cur else lines


# --------------------------------------------------------------------------- html


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # HTML-escaped on render
    images: list[tuple[Path, str]] = field(default_factory=list)  # (file, caption)
    table: list[dict[str, Any]] = field(default_factory=list)


def render_html(title: str, summary: list[str], sections: Sequence[Section], path: Path) -> Path:
    """One self-contained page; images are linked relative to the page."""
    base = path.parent
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd;margin:.3em 0}table{border-collapse:collapse;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37;font-weight:600}"
        ".miss{color:#b35900;font-weight:600}figure{margin:0 0 1.2em 0}figcaption{font-size:.85em;color:#555}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul class='summary'>" + "".join(f"<li>{s}</li>" for s in summary) + "</ul>",
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in sec.paragraphs)
        if sec.table:
            cols = list(sec.table[0])
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>")
            for row in sec.table:
                parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in cols) + "</tr>")
            parts.append("</table>")
        for img, caption in sec.images:
            rel = Path(os.path.relpath(Path(img).resolve(), base.resolve())).as_posix()
            parts.append(
                f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    # Lets a headless browser (and the test) tell that every chart and grid decoded.
    parts.append(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.imagesTotal=i.length;"
        "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>"
    )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def latest_scores(catalog: Catalog, image_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The newest identity score of each image (image_id, verdict, similarity, threshold, path)."""
    if not image_ids:
        return []
    return catalog.rows(
        """SELECT * EXCLUDE (rn) FROM (
               SELECT s.image_id, s.verdict, s.similarity, s.threshold, i.path,
                      row_number() OVER (PARTITION BY s.image_id ORDER BY s.scored_at DESC) AS rn
               FROM identity_scores s JOIN images i USING (image_id)
               WHERE s.image_id IN (SELECT unnest(?))) WHERE rn = 1""",
        [list(image_ids)],
    )


# --------------------------------------------------------------------------- the iteration report


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
    return [(Path(s["abs_path"]), f"{s['verdict']} {_fmt(s['similarity'])} {s['image_id'][:8]}") for s in ordered[:n]]


def iteration_report(root: Path, catalog: Catalog, character: str, number: int) -> IterationReport:
    """Write ``<root>/reports/<character>/iteration-<number>/index.html`` from the catalog and return its gist.

    Compares the identity pass rate of the synthetic images of this iteration's LoRA with the previous
    iteration's (or with the enrichment candidates for the first one) and says whether the 70% target is met.
    """
    from flenwheel.generation import synthetic_images

    out = root / "reports" / character / f"iteration-{number}"
    iterations = [r for r in catalog.iterations(character) if r["number"] <= number]
    loras = {r["lora_id"]: r for r in catalog.rows("SELECT * FROM loras WHERE character = ?", [character])}
    enrich_ids = [r["image_id"] for r in catalog.rows(
        "SELECT image_id FROM images WHERE character = ? AND origin IN ('edit', 'augment')", [character])]  # fmt: skip

    def scored(ids: Sequence[str]) -> list[dict[str, Any]]:
        return [{**s, "abs_path": str(root / s["path"])} for s in latest_scores(catalog, ids)]

    arms_scores: dict[str, list[dict[str, Any]]] = {"enrichment": scored(enrich_ids)}
    for it in iterations:
        if it["lora_id"]:
            arms_scores[f"synthetic v{it['number']}"] = scored(synthetic_images(catalog, it["lora_id"]))
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
        best_caption = f"{name}: best by similarity" + ("" if any(r["similarity"] is not None for r in rows)
                                                         else " (no image had a face to compare)")  # fmt: skip
        grids.append((image_grid(_grid_tiles(rows, True, 12), out / f"best-{name.replace(' ', '-')}.png"),
                      best_caption))  # fmt: skip
        grids.append((image_grid(_grid_tiles(rows, False, 12), out / f"worst-{name.replace(' ', '-')}.png"),
                      f"{name}: worst by similarity (no face first)"))  # fmt: skip

    by_origin: dict[str, dict[str, int]] = {}
    by_category: dict[str, dict[str, int]] = {}
    for it in iterations:
        version = it["dataset_version"]
        if not version:
            continue
        rows = catalog.rows(
            """SELECT i.origin, coalesce(json_extract_string(d.params, '$.category'), 'source') AS category
               FROM dataset_members m JOIN images i USING (image_id)
               LEFT JOIN (SELECT DISTINCT ON (child_id) child_id, params FROM derivations WHERE parent_rank = 0
                          ORDER BY child_id, created_at) d ON d.child_id = m.image_id
               WHERE m.version_id = ?""",
            [version],
        )
        label = version.split("@")[-1]
        for r in rows:
            by_origin.setdefault(label, {}).setdefault(r["origin"], 0)
            by_origin[label][r["origin"]] += 1
            by_category.setdefault(label, {}).setdefault(r["category"], 0)
            by_category[label][r["category"]] += 1
    figures.append((composition_chart(by_origin, out / "composition_origin.png", "dataset versions by origin"),
                    "dataset composition by origin"))  # fmt: skip
    figures.append((composition_chart(by_category, out / "composition_category.png", "by prompt category"),
                    "dataset composition by prompt category"))  # fmt: skip
    losses, checkpoints = {}, {}
    for it in iterations:
        if it["lora_id"] in loras:
            loss, ckpt = _lora_curves(root, loras[it["lora_id"]]["path"])
            losses[f"LoRA v{it['number']}"], checkpoints[f"LoRA v{it['number']}"] = loss, ckpt
    figures.append(
        (training_curves(losses, checkpoints, out / "training.png"), "training loss and checkpoint identity")
    )

    table = [
        {"group": a.name, "images": a.n, "passed": a.passed, "pass_rate": a.pass_rate,
         "mean_similarity": a.mean_similarity, **{f"verdict {k}": v for k, v in sorted(a.verdicts.items())}}
        for a in arms
    ]  # fmt: skip
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
        summary.append("No face was found in any synthetic image: expected with the random-weight cpu-tiny models, "
                       "whose outputs are noise by design.")  # fmt: skip
    sections = [
        Section("Identity by group", images=figures[:2], table=table),
        Section("Best and worst images", images=grids),
        Section("Dataset composition", images=figures[2:4]),
        Section("Training", images=figures[4:]),
    ]
    editor = _editor_section(root, catalog, character)
    if editor is not None:
        sections.append(editor)
    path = render_html(f"{character}: flywheel iteration {number}", summary, sections, out / "index.html")
    markdown = (
        f"## {character}: flywheel iteration {number}\n\n"
        f"- identity pass rate: {change}\n- target {TARGET_PASS_RATE:.0%}: **{verdict}**\n"
        f"- report: `{path}`\n"
    )
    return IterationReport(path, markdown, table, metrics, target_met)


def _editor_section(root: Path, catalog: Catalog, character: str) -> Section | None:
    """Flywheel 2 in the iteration report: every evaluated editor LoRA of the character, base vs LoRA."""
    rows = catalog.rows(
        """SELECT l.lora_id, split_part(m.scope_id, ':', -1) AS arm, m.name, m.value
           FROM loras l JOIN metrics m ON m.scope = 'edit_eval' AND m.scope_id LIKE l.lora_id || ':%'
           WHERE l.character = ? AND l.kind = 'qwen_edit' ORDER BY l.created_at, m.recorded_at""",
        [character],
    )
    if not rows:
        return None
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["lora_id"], {"editor LoRA": r["lora_id"]})[f"{r['arm']} {r['name']}"] = r["value"]
    columns = ("editor LoRA", "base n", "base pass_rate", "lora pass_rate", "base mean_similarity",
               "lora mean_similarity")  # fmt: skip
    table = [{k: v.get(k) for k in columns} for v in values.values()]
    grids = []
    for lora_id in values:
        grid = root / "reports" / character / f"edit-eval-{lora_id}" / "base_vs_lora.png"
        if grid.exists():
            grids.append((grid, f"{lora_id}: base (left) vs LoRA (right), same input, prompt and seed"))
    return Section(
        "Editor LoRA (flywheel 2): base editor vs base + LoRA on held-out photos",
        ["Pass rate and mean similarity of the same edits with and without the character's editor LoRA."],
        grids,
        table,
    )


def edit_eval_report(
    root: Path, character: str, lora_id: str, rows: Sequence[dict[str, Any]], images_dir: Path, held_out: bool
) -> Path:
    """The editor LoRA's evaluation page: both arms' identity, and base vs LoRA side by side per input."""
    out = root / "reports" / character / f"edit-eval-{lora_id}"
    arms = [arm_stats(name, [r for r in rows if r["arm"] == arm]) for arm, name in
            (("base", "base editor"), ("lora", "base + LoRA"))]  # fmt: skip
    thresholds: list[float] = []
    figures = [
        (pass_rate_bars(arms, out / "pass_rates.png"), "identity pass rate of the edits (dashed: the 70% target)"),
        (similarity_histogram(arms, thresholds, out / "similarity.png"), "identity similarity of the edits"),
    ]
    base = {(r["source_id"], r["prompt_id"], r["seed"]): r for r in rows if r["arm"] == "base"}
    tiles: list[tuple[Path, str]] = []
    for r in rows:
        if r["arm"] != "lora" or (r["source_id"], r["prompt_id"], r["seed"]) not in base:
            continue
        b = base[(r["source_id"], r["prompt_id"], r["seed"])]
        tiles.append((images_dir / b["file"], f"base {r['prompt_id']}: {b['verdict']} {_fmt(b['similarity'])}"))
        tiles.append((images_dir / r["file"], f"LoRA {r['prompt_id']}: {r['verdict']} {_fmt(r['similarity'])}"))
    grid = image_grid(tiles, out / "base_vs_lora.png", columns=6)
    b_rate, l_rate = arms[0].pass_rate, arms[1].pass_rate
    better = l_rate is not None and b_rate is not None and l_rate > b_rate
    pct = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    summary = [
        f"Identity pass rate: base editor {pct(b_rate)} → base + LoRA {pct(l_rate)}: "
        f"<span class='{'ok' if better else 'miss'}'>{'the LoRA keeps the character better' if better else 'no gain'}"
        "</span>.",
        "Inputs: held-out source photos the LoRA never saw." if held_out else
        "Inputs: the training sources (the character has no held-out photo: add more sources for a fair test).",
    ]  # fmt: skip
    table = [{"arm": a.name, "edits": a.n, "passed": a.passed, "pass_rate": a.pass_rate,
              "mean_similarity": a.mean_similarity} for a in arms]  # fmt: skip
    sections = [
        Section("Identity", images=figures, table=table),
        Section("Base vs LoRA, same input, prompt and seed", images=[(grid, "pairs: base left, LoRA right")]),
    ]
    return render_html(f"{character}: editor LoRA {lora_id}", summary, sections, out / "index.html")

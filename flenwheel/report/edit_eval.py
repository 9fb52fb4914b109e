"""The page of an editor LoRA's evaluation: both arms' identity, and base vs LoRA side by side per input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.report.grids import image_grid
from flenwheel.report.page import Section, cell, render_html
from flenwheel.report.plots import arm_stats, pass_rate_bars, similarity_histogram


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
        tiles.append((images_dir / b["file"], f"base {r['prompt_id']}: {b['verdict']} {cell(b['similarity'])}"))
        tiles.append((images_dir / r["file"], f"LoRA {r['prompt_id']}: {r['verdict']} {cell(r['similarity'])}"))
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

"""The page of a LoRA evaluation (``flenwheel evaluate --lora``): per evaluation prompt, a grid of its samples, each
with its verdict, likeness and copy score and its nearest training image beside it, and the rates per prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from flenwheel.report.grids import image_grid
from flenwheel.report.page import Section, render_html

COLUMNS = ("n", "good_rate", "copy_rate", "weak_rate", "no_face_rate", "multi_face_rate", "mean_likeness", "adherence")
NOTE = (
    "Verdicts (docs/evaluation.md): copy — the sample reproduces its nearest training image (copy score at or above "
    "the ceiling); weak — its face is less like the character than the likeness floor; good — neither; no_face and "
    "multi_face — no single face to judge. Adherence: the share of the prompt's yes/no checks the critic passed "
    "('-': not measured)."
)


def _placeholder() -> Image.Image:
    """A grey tile where a sample has no nearest training image to show."""
    return Image.new("RGB", (96, 96), (225, 225, 225))


def lora_evaluation_report(
    out: Path,
    title: str,
    summary: list[str],
    rows: Sequence[dict[str, Any]],
    metrics: dict[str, dict[str, float]],
) -> Path:
    """Write ``out/index.html``. ``rows``: one per sample with ``file`` (its image), ``prompt_id``, ``prompt``,
    ``seed``, ``label`` and ``nearest_path``/``nearest_label`` (None when there is no nearest image); ``metrics``:
    ``"all"`` and each prompt id -> its summary metrics."""
    grids = []
    for prompt_id in dict.fromkeys(r["prompt_id"] for r in rows):
        samples = [r for r in rows if r["prompt_id"] == prompt_id]
        tiles: list[tuple[Path | Image.Image, str]] = []
        for r in samples:
            tiles.append((Path(r["file"]), f"seed {r['seed']}: {r['label']}"))
            near = r.get("nearest_path")
            tiles.append((Path(near), r["nearest_label"]) if near else (_placeholder(), "no training face to compare"))
        grid = image_grid(tiles, out / f"samples-{prompt_id}.png", tile=160, columns=4)
        grids.append((grid, f"{prompt_id}: {samples[0]['prompt']} — each sample, then its nearest training image"))
    table = [{"prompt": key, **{c: m.get(c) for c in COLUMNS}} for key, m in metrics.items()]
    sections = [
        Section("Rates", [NOTE], table=table),
        Section("Samples per prompt, each beside its nearest training image", images=grids),
    ]
    return render_html(title, summary, sections, out / "index.html")

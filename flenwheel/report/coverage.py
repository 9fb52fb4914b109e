"""The report's view of coverage (docs/coverage.md): each dataset version's bins as a table and a chart, the latest
version's gaps thinnest first, and what each aimed enrichment aimed at, with the bin before and now."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import CoverageSettings
from flenwheel.core.coverage import Coverage, bin_target, coverage_of
from flenwheel.core.types import COVERAGE_AXES
from flenwheel.report.page import Section
from flenwheel.report.plots import coverage_chart


def version_coverage(catalog: Catalog, versions: Sequence[str], settings: CoverageSettings) -> dict[str, Coverage]:
    """Coverage of each frozen version, by its short label (``v1``)."""
    return {v.split("@")[-1]: coverage_of(catalog.coverage_rows(v.split("@")[0], v), settings) for v in versions}


def coverage_sections(
    catalog: Catalog, character: str, versions: Sequence[str], settings: CoverageSettings, out: Path
) -> list[Section]:
    """Coverage per version (table and chart), the latest version's ranked gaps, and the aimed enrichments."""
    sections = []
    per_version = version_coverage(catalog, versions, settings)
    if per_version:
        latest_label, latest = list(per_version.items())[-1]
        table = []
        for axis, bins in COVERAGE_AXES.items():
            for name in bins:
                row: dict[str, Any] = {"axis": axis, "bin": name, f"target {latest_label}": None}
                row[f"target {latest_label}"] = bin_target(settings, axis, name, latest.n) or None
                row |= {label: c.counts[axis].get(name, 0) for label, c in per_version.items()}
                table.append(row)
        chart = coverage_chart({label: c.counts for label, c in per_version.items()}, out / "coverage.png")
        variety = "; ".join(
            f"{label}: {len(c.variety['outfit'])} outfit(s), {len(c.variety['background'])} background(s) named"
            for label, c in per_version.items()
        )
        sections.append(
            Section(
                "Coverage per dataset version",
                [
                    "Images per bin: head yaw (from the subject's point of view) and pitch, framing, expression, "
                    "light and warmth, measured on every member; the target is the least a bin should hold "
                    "(coverage.targets). Captions: " + variety + "."
                ],
                [(chart, "images per coverage bin, one bar per dataset version")],
                table,
            )
        )
        gaps = [
            {"rank": i, "gap": g.key, "images": g.count, "target": g.target, "missing": g.deficit}
            for i, g in enumerate(latest.gaps, start=1)
        ]
        sections.append(
            Section(
                f"Coverage gaps of {latest_label}, thinnest first",
                ["The next aimed enrichment goes after these in this order." if gaps else "No gaps: all bins full."],
                table=gaps,
            )
        )
    plans = [p for p in catalog.plans(character) if p["aims"]]
    if plans:
        now = coverage_of(catalog.coverage_rows(character), settings)
        rows = []
        for plan in plans:
            before = plan["coverage"]["coverage"]
            for aim in plan["aims"]:
                axis, name = aim["axis"], aim["bin"]
                measured = axis in COVERAGE_AXES
                rows.append(
                    {
                        "planned": str(plan["planned_at"])[:19],
                        "gap aimed at": f"{axis}:{name}",
                        "prompt": aim["prompt_id"],
                        "source": aim["source_id"][:12],
                        "jobs": aim["jobs"],
                        "images before": before.get(axis, {}).get(name) if measured else None,
                        "images now": now.counts[axis].get(name, 0) if measured else len(now.variety[axis]),
                    }
                )
        sections.append(
            Section(
                "Aimed enrichment: the gaps each plan went after",
                [
                    "Each row is a source x prompt an enrichment chose for a gap (--fill-gaps, the flywheel default); "
                    "'images before' is the bin when it was planned, 'images now' in the set the next version would "
                    "hold (approved images only). Whether each edit landed is the 'landed pass' column of the "
                    "per-prompt table."
                ],
                table=rows,
            )
        )
    return sections

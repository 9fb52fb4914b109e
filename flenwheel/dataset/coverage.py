"""Assessing a character's images (coverage bins and quality flags, docs/coverage.md) and the coverage of its sets.

:func:`assess_images` measures every image of the character that has no bins yet: its head pose, framing,
expression and light (:mod:`flenwheel.identity.attributes`) and its quality flags (:mod:`.quality`), written in one
transaction per batch. It runs right after identity scoring wherever images are scored (the enrich, flywheel and
nightly flows score the sources first, then every batch of edits or generated images), so sources are assessed
before an enrichment is planned on their gaps and candidates before they reach a review gate; ingest itself stays
in ``store``, below the face models. ``flenwheel dataset audit`` assesses what is left before it reports.

:func:`set_coverage` counts a set (the version a character would freeze next, or a frozen one) with
:func:`flenwheel.core.coverage.coverage_of`, and :func:`audit` adds every image's flags and bins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character
from flenwheel.core.coverage import Coverage, bin_column, coverage_of
from flenwheel.core.types import COVERAGE_AXES
from flenwheel.dataset.quality import DuplicateFinder, flag_rows, judge, measure_quality
from flenwheel.identity.attributes import measure_image
from flenwheel.identity.backends import load_backend
from flenwheel.store.objects import load_rgb
from flenwheel.store.workspace import Workspace

log = logging.getLogger(__name__)


def assess_images(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    image_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Measure bins and quality flags of the character's images that have no bins yet (only ``image_ids`` when
    given); returns how many images each flag was raised on (and ``assessed``). Written every
    ``identity.batch_size`` images, so an interrupted assessment keeps its work."""
    todo = catalog.images_to_assess(character.name, image_ids)
    counts: dict[str, int] = {"assessed": 0}
    if not todo:
        return counts
    backend = load_backend(character.identity.backend, ws.settings.identity)
    settings = ws.settings.quality
    pool = catalog.duplicate_pool(character.name)
    order = {r["image_id"]: i for i, r in enumerate(pool)}
    finder = DuplicateFinder(ws.root)
    attributes: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    for done, row in enumerate(todo, start=1):
        rgb = load_rgb(ws.root / row["path"])
        measured, face, _ = measure_image(backend, rgb)
        # Compared with earlier images only (the later of two duplicates is flagged) and never within its lineage.
        mine = order.get(row["image_id"], len(pool))
        earlier = [p for p in pool[:mine] if p["lineage_root"] != row["lineage_root"]]
        duplicate = finder.best_match(row["image_id"], rgb, earlier)
        verdicts = judge(measure_quality(rgb, face.box if face else None, settings.train_side), settings, duplicate)
        attributes.append({"image_id": row["image_id"], **measured.row(), "backend": backend.name})
        flags += flag_rows(row["image_id"], verdicts, run_id)
        counts["assessed"] += 1
        for f in verdicts:
            counts[f.name] = counts.get(f.name, 0) + f.raised
        if len(attributes) >= ws.settings.identity.batch_size or done == len(todo):
            catalog.record_assessments(attributes, flags, run_id)
            attributes, flags = [], []
        if on_progress:
            on_progress(done, len(todo))
    raised = ", ".join(f"{n} {name}" for name, n in counts.items() if name != "assessed" and n)
    log.info(f"assessed {counts['assessed']} image(s) of {character.name}: flags {raised or 'none'}")
    return counts


def set_coverage(
    ws: Workspace, catalog: Catalog, character: str, version_id: str | None = None, pending: bool = False
) -> tuple[Coverage, list[dict[str, Any]]]:
    """The coverage of a version (or of the set the character would freeze next; ``pending`` adds the undecided
    candidates that passed their checks) and its rows, one per image."""
    rows = catalog.coverage_rows(character, version_id, pending)
    return coverage_of(rows, ws.settings.coverage), rows


@dataclass
class Audit:
    """Every image of a set with its flags and bins, and the set's coverage with its ranked gaps."""

    character: str
    version: str | None
    images: list[dict[str, Any]]
    coverage: Coverage

    def image_objects(self) -> list[dict[str, Any]]:
        """One JSON object per image: ``image_id``, ``origin``, ``flags`` (raised ones) and each axis's bin."""
        return [
            {
                "image_id": r["image_id"],
                "origin": r["origin"],
                "prompt_id": r["prompt_id"],
                "flags": list(r["flags"]),
                **{bin_column(axis): r[bin_column(axis)] for axis in COVERAGE_AXES},
                "yaw": None if r["yaw"] is None else round(r["yaw"], 2),
                "pitch": None if r["pitch"] is None else round(r["pitch"], 2),
            }
            for r in self.images
        ]

    def summary(self) -> dict[str, Any]:
        """The closing JSON object: ``coverage`` (bins and names per axis), ``gaps`` (thinnest first) and counts."""
        flagged: dict[str, int] = {}
        for r in self.images:
            for name in r["flags"]:
                flagged[name] = flagged.get(name, 0) + 1
        return {
            "summary": True,
            "character": self.character,
            "version": self.version,
            "images": len(self.images),
            "flagged": flagged,
            **self.coverage.as_json(),
        }


def audit(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    version_id: str | None = None,
    run_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Audit:
    """Assess what is not assessed yet, then the flags and bins of every image of the set (the version, or what
    the next version would hold) and its coverage."""
    assess_images(ws, catalog, character, run_id=run_id, on_progress=on_progress)
    coverage, rows = set_coverage(ws, catalog, character.name, version_id)
    return Audit(character.name, version_id, rows, coverage)

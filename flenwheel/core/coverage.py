"""What a set of images covers and what it lacks: bins counted per axis, outfits and backgrounds read from the
captions, and the gaps ranked thinnest first (docs/coverage.md).

Plain Python over rows the catalog returns (one per image: its bins and its caption). It sits in ``core`` because
three packages that may not import each other need the same answer: the audit (:mod:`flenwheel.dataset.coverage`),
the aimed enrichment (:mod:`flenwheel.editing.planning`) and the iteration report (:mod:`flenwheel.report`).

A bin's *target* is ``max(coverage.min_images, ceil(share * n))`` images for a set of ``n`` (``coverage.targets``
in configs/flenwheel.yaml gives the share per bin); a variety axis (outfit, background) targets
``coverage.min_distinct`` distinct names. A bin short of its target is a *gap*; gaps are ranked by how full they
are (0 images of 3 before 1 of 3), then by how many images they lack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flenwheel.core.config.settings import CoverageSettings
from flenwheel.core.types import COVERAGE_AXES, VARIETY_AXES

UNKNOWN = "unknown"  # an image whose bin on an axis could not be measured (no face for yaw, pitch, ...)
DISTINCT = "distinct"  # the "bin" of a variety gap: distinct names on the axis


@dataclass(frozen=True)
class Gap:
    """A bin (or a variety axis) with fewer images (names) than its target."""

    axis: str
    bin: str
    count: int
    target: int

    @property
    def deficit(self) -> int:
        return max(0, self.target - self.count)

    @property
    def fill(self) -> float:
        return self.count / self.target if self.target else 1.0

    @property
    def key(self) -> str:
        return f"{self.axis}:{self.bin}"

    def as_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "bin": self.bin, "count": self.count, "target": self.target, "deficit": self.deficit}


@dataclass
class Coverage:
    """Bin counts of a set of ``n`` images, the names its captions give per variety axis, and its ranked gaps."""

    n: int
    counts: dict[str, dict[str, int]]  # axis -> bin -> images (bin "unknown": not measurable)
    variety: dict[str, dict[str, int]]  # outfit/background -> name -> images
    gaps: list[Gap] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "coverage": {axis: dict(bins) for axis, bins in self.counts.items()},
            "variety": {axis: dict(names) for axis, names in self.variety.items()},
            "gaps": [g.as_json() for g in self.gaps],
        }

    def table(self, settings: CoverageSettings) -> list[dict[str, Any]]:
        """One row per axis and bin (variety axes: one row with the distinct names), for reports and the CLI."""
        rows: list[dict[str, Any]] = []
        for axis, bins in COVERAGE_AXES.items():
            for name in (*bins, UNKNOWN):
                count = self.counts.get(axis, {}).get(name, 0)
                if name == UNKNOWN and not count:
                    continue
                target = None if name == UNKNOWN else bin_target(settings, axis, name, self.n)
                share = count / self.n if self.n else None
                rows.append({"axis": axis, "bin": name, "images": count, "share": share, "target": target})
        for axis in VARIETY_AXES:
            names = self.variety.get(axis, {})
            rows.append(
                {
                    "axis": axis,
                    "bin": ", ".join(sorted(names)) or "(no caption names one)",
                    "images": sum(names.values()),
                    "share": None,
                    "target": settings.min_distinct,
                }
            )
        return rows


def bin_target(settings: CoverageSettings, axis: str, name: str, n: int) -> int:
    """How many images of a set of ``n`` the bin should hold (0: no target)."""
    share = settings.targets.get(axis, {}).get(name, 0.0)
    return max(settings.min_images, math.ceil(share * n)) if share > 0 else 0


def rank_gaps(
    counts: Mapping[str, Mapping[str, int]],
    variety: Mapping[str, Mapping[str, int]],
    n: int,
    settings: CoverageSettings,
) -> list[Gap]:
    """Bins short of their target, thinnest first (fill ratio, then what they lack, then axis and bin order).

    A variety axis is a gap only when some caption names something on it: captions that name no outfit at all say
    nothing about how many outfits the set shows (caption the set first, docs/captions.md).
    """
    gaps = []
    for axis, bins in COVERAGE_AXES.items():
        for name in bins:
            target = bin_target(settings, axis, name, n)
            count = counts.get(axis, {}).get(name, 0)
            if count < target:
                gaps.append(Gap(axis, name, count, target))
    for axis in VARIETY_AXES:
        names = variety.get(axis, {})
        if names and len(names) < settings.min_distinct:
            gaps.append(Gap(axis, DISTINCT, len(names), settings.min_distinct))
    order = {axis: i for i, axis in enumerate([*COVERAGE_AXES, *VARIETY_AXES])}
    position = {(axis, name): i for axis, bins in COVERAGE_AXES.items() for i, name in enumerate(bins)}
    return sorted(gaps, key=lambda g: (g.fill, -g.deficit, order[g.axis], position.get((g.axis, g.bin), 0)))


def coverage_of(rows: Iterable[Mapping[str, Any]], settings: CoverageSettings) -> Coverage:
    """Coverage of a set from one row per image holding its bins (``yaw_bin``, ``pitch_bin``, ``framing``,
    ``expression``, ``light``, ``warmth``; None when not measured) and its ``caption``."""
    counts: dict[str, dict[str, int]] = {axis: dict.fromkeys(bins, 0) for axis, bins in COVERAGE_AXES.items()}
    variety: dict[str, dict[str, int]] = {axis: {} for axis in VARIETY_AXES}
    n = 0
    for row in rows:
        n += 1
        for axis in COVERAGE_AXES:
            value = row.get(bin_column(axis)) or UNKNOWN
            counts[axis][value] = counts[axis].get(value, 0) + 1
        for axis, name in caption_names(row.get("caption")).items():
            if name:
                variety[axis][name] = variety[axis].get(name, 0) + 1
    return Coverage(n, counts, variety, rank_gaps(counts, variety, n, settings))


def bin_column(axis: str) -> str:
    """The column of ``image_attributes`` (and of audit rows) that holds an axis's bin."""
    return f"{axis}_bin" if axis in ("yaw", "pitch", "warmth") else axis


# ------------------------------------------------------------------ names in captions

_ARTICLES = re.compile(r"^(?:(?:a|an|the|his|her|their|some)\s+)+")
# A name is a few words that are not function words: "plain grey", "red sweater", "dark business suit".
_WORD = r"(?!(?:of|a|an|the|in|on|at|front|against|with|and|is|are|his|her|their|wearing)\b)[\w'-]+"
_NAME = rf"((?:{_WORD}\s+){{0,3}}{_WORD})"
_STOP = r"(?=[,.;:!?]|\s+(?:and|with|while|who|as|against|in front of|standing|sitting|smiling|looking)\b|$)"
_OUTFIT = re.compile(r"\b(?:wearing|dressed in|clad in)\s+(.{2,60}?)" + _STOP, re.IGNORECASE)
_BACKGROUND = re.compile(rf"\b{_NAME}\s+(?:background|backdrop)\b", re.IGNORECASE)
_PLACE = re.compile(
    r"\b(?:in front of|against|outdoors in|standing in|sitting in|inside|in|at|on)\s+(?:a|an|the)\s+"
    r"((?:[\w'-]+\s+){0,2}(?:wall|room|office|park|street|studio|garden|beach|forest|field|stage|hall|kitchen|city|"
    r"landscape|curtains?|flags?|window|library|cafe|restaurant|podium|desert|snow|mountains?))\b",
    re.IGNORECASE,
)


def _clean(name: str) -> str:
    return _ARTICLES.sub("", re.sub(r"\s+", " ", name.strip().lower())).strip(" -'")


def caption_names(caption: str | None) -> dict[str, str | None]:
    """The outfit (after "wearing", "dressed in") and the background ("... background", "in a park", "against a
    blue wall") a caption names, lower case without articles; None for what it does not name."""
    text = caption or ""
    outfit = _OUTFIT.search(text)
    background = _BACKGROUND.search(text) or _PLACE.search(text)
    return {
        "outfit": _clean(outfit.group(1)) if outfit else None,
        "background": _clean(background.group(1)) if background else None,
    }

"""Identity statistics of groups of images, and the charts made of them (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are made by flows and CI
import matplotlib.pyplot as plt

from flenwheel.core.files import atomic_write

TARGET_PASS_RATE = 0.70  # the product's consistency target: share of outputs that keep the identity


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


def _save(fig: Any, path: Path) -> Path:
    """Write the figure as PNG atomically (a kill or a full disk leaves the old file or none, never half)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
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


def checkpoint_chart(series: dict[str, list[dict[str, Any]]], chosen: dict[str, int], path: Path) -> Path:
    """Per checkpoint of each LoRA: mean likeness of its samples (left), copy rate, good rate and prompt adherence
    (right, %); the exported checkpoint is ringed. ``series``: name -> rows with ``step``, ``mean_likeness``,
    ``copy_rate``, ``good_rate``, ``adherence`` (None where not measured)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        likeness = [r.get("mean_likeness") for r in rows]
        if any(v is not None for v in likeness):
            ax1.plot(steps, [float("nan") if v is None else v for v in likeness], marker="o", label=name)
        for key, style in (("copy_rate", "-"), ("good_rate", "--"), ("adherence", ":")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                shown = [float("nan") if v is None else v * 100 for v in values]
                ax2.plot(steps, shown, linestyle=style, marker="o", label=f"{name}: {key.replace('_', ' ')}")
        pick = next((r for r in rows if r["step"] == chosen.get(name)), None)
        if pick is not None:
            for ax, key, factor in ((ax1, "mean_likeness", 1), (ax2, "good_rate", 100)):
                if pick.get(key) is not None:
                    ax.scatter([pick["step"]], [pick[key] * factor], s=180, facecolors="none", edgecolors="red")
            ax2.axvline(pick["step"], color="red", linewidth=0.8)
            ax2.annotate("exported", (pick["step"], 102), color="red", fontsize=8, ha="center")
    ax1.set_xlabel("checkpoint step")
    ax1.set_ylabel("mean likeness of the samples")
    ax2.set_xlabel("checkpoint step")
    ax2.set_ylabel("% of samples")
    ax2.set_ylim(-5, 110)
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no sample had a face", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def coverage_chart(per_version: dict[str, dict[str, dict[str, int]]], path: Path) -> Path:
    """One panel per coverage axis, its bins side by side, one bar per dataset version (``{label: counts}``)."""
    axes_names = list(next(iter(per_version.values()))) if per_version else []
    cols = 3
    rows = max(1, -(-len(axes_names) // cols))
    fig, panels = plt.subplots(rows, cols, figsize=(11, 3.0 * rows), squeeze=False)
    width = 0.8 / max(1, len(per_version))
    for i, axis in enumerate(axes_names):
        ax = panels[i // cols][i % cols]
        bins = [b for b in next(iter(per_version.values()))[axis] if b != "unknown"]
        for k, (label, counts) in enumerate(per_version.items()):
            xs = [j + k * width for j in range(len(bins))]
            ax.bar(xs, [counts[axis].get(b, 0) for b in bins], width=width, label=label)
        ax.set_xticks([j + width * (len(per_version) - 1) / 2 for j in range(len(bins))])
        ax.set_xticklabels([b.replace("_", " ") for b in bins], rotation=30, ha="right", fontsize=7)
        ax.set_title(axis, fontsize=9)
        ax.set_ylabel("images", fontsize=8)
    for j in range(len(axes_names), rows * cols):
        panels[j // cols][j % cols].axis("off")
    if per_version:
        panels[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)

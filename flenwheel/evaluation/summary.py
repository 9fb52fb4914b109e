"""What a set of samples says about the model that made them: verdict rates, likeness, adherence, one composite.

**The composite** (what the exported checkpoint maximises, docs/training.md)::

    composite = mean over samples of (good_i × adherence_i)  −  copy rate

``good_i`` is 1 for a ``good`` sample, else 0; ``adherence_i`` the share of its prompt's checks the critic passed
(1 when nothing was measured: no critic, or a prompt without checks). A good sample that follows its prompt earns
a whole point, a good one that ignores it earns its share, a weak sample or one without a face earns nothing, and
a copy costs a point: a checkpoint that reproduces its training photos ranks below one that shows the character
less often but never copies. The value lies in -1..1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flenwheel.evaluation.scoring import VERDICTS, SampleScore
from flenwheel.report.format import percent


@dataclass(frozen=True)
class Summary:
    n: int
    counts: dict[str, int] = field(default_factory=dict)  # samples per verdict
    mean_likeness: float | None = None  # over samples with one face
    adherence: float | None = None  # over samples whose checks were answered; None: not measured
    composite: float | None = None

    def rate(self, verdict: str) -> float | None:
        return self.counts.get(verdict, 0) / self.n if self.n else None

    def metrics(self) -> dict[str, float]:
        """The summary as ``metrics`` rows (rates as shares; what was not measured is left out)."""
        out = {"n": float(self.n)}
        if self.n:
            out |= {f"{v}_rate": float(self.rate(v) or 0.0) for v in VERDICTS}
        for name in ("mean_likeness", "adherence", "composite"):
            value = getattr(self, name)
            if value is not None:
                out[name] = float(value)
        return out

    def line(self) -> str:
        """``12 samples: good 58%, copy 17%, weak 8%, no_face 17%, multi_face 0%; likeness 0.612; adherence 75%``"""
        if not self.n:
            return "no samples"
        rates = ", ".join(f"{v} {percent(self.rate(v) or 0.0)}" for v in VERDICTS)
        likeness = "-" if self.mean_likeness is None else f"{self.mean_likeness:.3f}"
        adherence = "not measured" if self.adherence is None else percent(self.adherence)
        return f"{self.n} sample(s): {rates}; mean likeness {likeness}; adherence {adherence}"


def summarise(scores: Sequence[SampleScore]) -> Summary:
    """Rates, mean likeness, adherence and the composite of ``scores`` (see the module docstring)."""
    n = len(scores)
    if not n:
        return Summary(0)
    counts = {v: sum(s.verdict == v for s in scores) for v in VERDICTS}
    likeness = [s.likeness for s in scores if s.one_face and s.likeness is not None]
    measured = [s.adherence for s in scores if s.adherence is not None]
    earned = sum((1.0 if s.adherence is None else s.adherence) for s in scores if s.verdict == "good")
    return Summary(
        n,
        counts,
        round(sum(likeness) / len(likeness), 6) if likeness else None,
        round(sum(measured) / len(measured), 6) if measured else None,
        round(earned / n - counts["copy"] / n, 6),
    )

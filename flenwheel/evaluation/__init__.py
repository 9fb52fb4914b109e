"""Sample scoring shared by the trainer, the synthetic gate, the report and the CLI (docs/evaluation.md).

:mod:`.composition` (how alike two pictures are around the face), :mod:`.band` (the likeness band per identity
backend), :mod:`.scoring` (one image as a sample: likeness, copy score, adherence, verdict), :mod:`.summary` (rates
and the composite a checkpoint is chosen by), :mod:`.lora` (a LoRA's evaluation set generated, scored, recorded).
"""

from flenwheel.evaluation.band import BANDS, Band, band_for
from flenwheel.evaluation.composition import Layout, composition_similarity, layout
from flenwheel.evaluation.scoring import (
    VERDICTS,
    EvaluationError,
    SampleScore,
    SampleScorer,
    adherence_of,
)
from flenwheel.evaluation.summary import Summary, summarise

__all__ = [
    "BANDS", "VERDICTS", "Band", "EvaluationError", "Layout", "SampleScore", "SampleScorer", "Summary",
    "adherence_of", "band_for", "composition_similarity", "layout", "summarise",
]  # fmt: skip

"""How a trainer judges a checkpoint by its samples.

* The character LoRA (FLUX): every sample scored by the evaluation engine (:class:`flenwheel.evaluation.SampleScorer`:
  likeness, copy of a training image, prompt adherence, verdict) against the dataset version it trains on; the
  checkpoint's composite decides (:func:`flenwheel.training.checkpoints.choose_checkpoint`). Identity similarity
  alone keeps rising as a LoRA memorises its photos and would pick the most over-fitted checkpoint.
* The editor LoRA (Qwen-Image-Edit): identity pass rate of its samples, which edit a held-out photo and are meant
  to stay close to it — a copy check would make no sense there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character
from flenwheel.evaluation import SampleScore, SampleScorer, summarise
from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
from flenwheel.store.workspace import Workspace
from flenwheel.training.checkpoints import CheckpointScore
from flenwheel.training.job import CheckpointJudge, SamplePrompt, SampleSpec, ScoreFn


def identity_scorer(ws: Workspace, catalog: Catalog, character: Character) -> ScoreFn:
    """Score sample images against the character's reference set, in this process."""
    refset = reference_set_for(ws, catalog, character)
    judge = judge_for(ws, character, refset)
    backend = load_backend(refset.backend, ws.settings.identity)
    return lambda images: [judge_image(backend, judge, np.asarray(img.convert("RGB"))) for img in images]


def identity_judge(score_fn: ScoreFn) -> CheckpointJudge:
    """A checkpoint's identity pass rate and mean similarity; labels ``pass 0.61``."""

    def judge(
        step: int, samples: Sequence[Image.Image], specs: Sequence[SampleSpec]
    ) -> tuple[CheckpointScore, list[str]]:
        scores = score_fn(list(samples))
        passed = sum(s.verdict == "pass" for s in scores)
        sims = [s.similarity for s in scores if s.similarity is not None]
        result = CheckpointScore(step, passed / len(scores), float(np.mean(sims)) if sims else None, len(scores))
        return result, [s.verdict if s.similarity is None else f"{s.verdict} {s.similarity:.2f}" for s in scores]

    return judge


def checkpoint_score(step: int, scores: Sequence[SampleScore]) -> CheckpointScore:
    """A checkpoint's score from its samples' evaluation (the identity pass rate kept beside it)."""
    summary = summarise(scores)
    passed = sum(s.identity == "pass" for s in scores)
    likeness = [s.likeness for s in scores if s.likeness is not None]
    return CheckpointScore(
        step,
        passed / len(scores) if scores else None,
        float(np.mean(likeness)) if likeness else None,
        len(scores),
        good_rate=summary.rate("good"),
        copy_rate=summary.rate("copy"),
        weak_rate=summary.rate("weak"),
        mean_likeness=summary.mean_likeness,
        adherence=summary.adherence,
        composite=summary.composite,
    )


def evaluation_judge(scorer: SampleScorer) -> CheckpointJudge:
    """Each sample scored by the evaluation engine with its prompt's checks; labels ``good 0.61``, ``copy 0.93``."""

    def judge(
        step: int, samples: Sequence[Image.Image], specs: Sequence[SampleSpec]
    ) -> tuple[CheckpointScore, list[str]]:
        scores = [
            scorer.score(img, f"step {step} sample {i}", None, spec.prompt.prompt_id, spec.seed, spec.prompt.checks)
            for i, (img, spec) in enumerate(zip(samples, specs, strict=True))
        ]
        return checkpoint_score(step, scores), [s.label() for s in scores]

    return judge


def evaluation_samples(ws: Workspace, character: Character) -> tuple[list[SamplePrompt], list[int]]:
    """The character's evaluation prompt set as checkpoint sample prompts, with its fixed seeds."""
    prompts, seeds = ws.evaluation_set(character)
    return [
        SamplePrompt(p.prompt.replace("{trigger}", character.trigger), p.id, tuple(p.checks)) for p in prompts.values()
    ], seeds

"""Synthetic admission: a generated image that copies a training image never enters the next version.

After generation, each synthetic image of a LoRA is scored as a sample (:class:`flenwheel.evaluation.SampleScorer`)
against the dataset version the LoRA was trained on, with its synthetic prompt's yes/no checks when a critic is
configured. The outcome is recorded as checks of the image (``verifications``: ``copy``, failed for the verdict
``copy``, and ``critic:<check>``), so the synthetic gate shows a copy as a failed check, the auto policy rejects it,
FiftyOne tags it and SQL finds it; :func:`flenwheel.dataset.iteration.next_version_members` keeps a copy out of the
next version even if someone approved it, and the iteration report counts the verdicts per LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character
from flenwheel.evaluation import SampleScorer
from flenwheel.evaluation.scoring import CriticSource
from flenwheel.store.objects import open_rgb
from flenwheel.store.workspace import Workspace

COPY_CHECK = "copy"


def check_synthetics(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    lora_id: str,
    image_ids: Sequence[str],
    run_id: str | None,
    critic: CriticSource = None,
) -> dict[str, int]:
    """Score the generated ``image_ids`` of ``lora_id`` not yet checked and record their checks; returns counts by
    verdict. A LoRA trained on no frozen version has nothing to be copied from: nothing is checked."""
    row = catalog.lora(lora_id)
    version = row["dataset_version"] if row else None
    todo = catalog.unchecked(list(image_ids), COPY_CHECK)
    if not version or not catalog.version_exists(version) or not todo:
        return {}
    prompts = ws.prompt_library(kind="synthetic")
    scorer = SampleScorer(ws, catalog, character, version, critic)
    rows, counts = [], {}
    for image in catalog.made_by_prompt(todo):
        prompt = prompts.get(image["prompt_id"] or "")
        score = scorer.score(
            open_rgb(ws.root / image["path"]),
            image["image_id"],
            image_id=image["image_id"],
            prompt_id=image["prompt_id"],
            checks=prompt.checks if prompt else (),
        )
        rows += score.verifications(image["image_id"], scorer.band, version, run_id)
        counts[score.verdict] = counts.get(score.verdict, 0) + 1
    catalog.add_checks({"verifications": rows})
    return counts

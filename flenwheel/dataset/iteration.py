"""Flywheel 1's policy: what each iteration's dataset version holds, when the flywheel stops, what it reports.

Per iteration N: dataset vN = the previous version + newly approved real and enriched images + the approved
synthetics of LoRA vN-1 (copies of training images kept out, near-duplicates dropped, synthetic share capped) ->
LoRA vN -> synthetic images -> identity and copy checks -> the synthetic review gate -> the iteration report.
``flows/flywheel.py`` orchestrates these steps; the decisions are made here, in plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character
from flenwheel.core.errors import FlenwheelError
from flenwheel.dataset import versions
from flenwheel.dataset.admission import COPY_CHECK
from flenwheel.dataset.quality import perceptual_hash
from flenwheel.gate import GateStatus
from flenwheel.store.workspace import Workspace


class FlywheelStopped(FlenwheelError):
    """The flywheel stops on purpose before an iteration (retraining would change nothing)."""


@dataclass(frozen=True)
class IterationPolicy:
    """How an iteration's version is chosen (the flywheel's parameters of that name)."""

    max_synthetic_share: float = 0.5
    max_hash_distance: int = 6
    min_new_synthetics: int = 1


@dataclass
class EnrichSummary:
    """What an enrichment stage did: jobs planned, images made, and the gate after it."""

    character: str
    jobs: int
    images: int
    status: str = "completed"  # or awaiting_review, or busy (another run holds the character)
    message: str = ""
    gate: GateStatus | None = None


@dataclass
class IterationOutcome:
    number: int
    status: str  # completed, already completed
    dataset_version: str | None = None
    lora_id: str | None = None
    generated: int = 0
    report: str | None = None
    target_met: bool | None = None


@dataclass
class FlywheelResult:
    """What a flywheel run did; ``status`` is completed, awaiting_review, stopped or busy (``message`` says why)."""

    character: str
    status: str = "completed"
    message: str = ""
    enrichment: EnrichSummary | None = None
    iterations: list[IterationOutcome] = field(default_factory=list)
    run_id: str | None = None

    @property
    def reports(self) -> list[str]:
        return [it.report for it in self.iterations if it.report]


@dataclass
class SyntheticSelection:
    """How the approved synthetics of one LoRA were admitted into the next version."""

    candidates: int = 0
    added: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)  # copy a training image (failed check 'copy'): never admitted
    near_duplicates: list[str] = field(default_factory=list)
    over_cap: list[str] = field(default_factory=list)


def next_version_members(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    previous_version: str | None,
    synthetic_from: str | None,
    max_synthetic_share: float,
    max_hash_distance: int,
) -> tuple[list[versions.Member], SyntheticSelection]:
    """Members of an iteration's version: vN + newly approved real/enriched images + approved synthetics.

    Synthetics already in ``previous_version`` stay (unless a review rejected them since). New ones are the
    approved images generated with LoRA ``synthetic_from``, best identity similarity first; one that copies a
    training image (its check ``copy`` failed, :mod:`flenwheel.dataset.admission`) is never admitted, approved or
    not (a LoRA retrained on its own copies of a photo learns that photo harder); each is dropped when its
    perceptual hash is within ``max_hash_distance`` bits of an image already kept (near-duplicates teach nothing
    and over-weight one look), and admission stops when synthetics would exceed ``max_synthetic_share`` of the
    version (a LoRA trained mostly on its own outputs drifts).
    """
    current = {m.image_id: m for m in versions.selected_members(catalog, character, ws.prompt_library(character))}
    kept = [m for m in current.values() if m.origin != "generate"]
    if previous_version:
        kept += [
            current[r["image_id"]]
            for r in catalog.version_members(previous_version)
            if r["origin"] == "generate" and r["image_id"] in current
        ]
    selection = SyntheticSelection()
    if synthetic_from:
        kept_ids = {m.image_id for m in kept}
        new = [current[i] for i in catalog.generated_with(synthetic_from) if i in current and i not in kept_ids]
        selection.candidates = len(new)
        copies = catalog.failing([m.image_id for m in new], COPY_CHECK)
        selection.copies = sorted(copies)
        new = [m for m in new if m.image_id not in copies]
        sims = {r["image_id"]: r["similarity"] or 0.0 for r in catalog.latest_scores([m.image_id for m in new])}
        new.sort(key=lambda m: (-sims.get(m.image_id, 0.0), m.image_id))
        hashes = [perceptual_hash(ws.root / m.path) for m in kept]
        n_real = sum(m.origin != "generate" for m in kept)
        n_synth = len(kept) - n_real
        share = min(max_synthetic_share, 0.99)
        cap = int(share * n_real / (1.0 - share)) if share > 0 else 0
        for m in new:
            h = perceptual_hash(ws.root / m.path)
            if any(h - other <= max_hash_distance for other in hashes):
                selection.near_duplicates.append(m.image_id)
            elif n_synth >= cap:
                selection.over_cap.append(m.image_id)
            else:
                kept.append(m)
                hashes.append(h)
                n_synth += 1
                selection.added.append(m.image_id)
    return sorted(kept, key=lambda m: m.image_id), selection


def freeze_iteration_version(
    ws: Workspace, catalog: Catalog, character: Character, number: int, policy: IterationPolicy, run_id: str | None
) -> str:
    """Freeze (or find) iteration ``number``'s dataset version and record it; raises :class:`FlywheelStopped`
    when too few new synthetics were admitted for retraining to change anything."""
    rows = {r["number"]: r for r in catalog.iterations(character.name)}
    recorded = (rows.get(number) or {}).get("dataset_version")
    if recorded:
        return recorded
    previous = rows.get(number - 1)
    synthetic_from = previous["lora_id"] if previous else None
    members, selection = next_version_members(
        ws,
        catalog,
        character,
        previous["dataset_version"] if previous else None,
        synthetic_from,
        policy.max_synthetic_share,
        policy.max_hash_distance,
    )
    if number > 1 and len(selection.added) < policy.min_new_synthetics:
        raise FlywheelStopped(
            f"iteration {number}: only {len(selection.added)} new synthetic image(s) were admitted "
            f"({selection.candidates} approved, {len(selection.copies)} copies of training images, "
            f"{len(selection.near_duplicates)} near-duplicates, {len(selection.over_cap)} over the cap), fewer than "
            f"min_new_synthetics={policy.min_new_synthetics}; "
            "retraining on the same data would change nothing"
        )
    extra = None
    if number > 1 and previous is not None:
        extra = {
            "iteration": number,
            "parent_version": previous["dataset_version"],
            "synthetic_from": synthetic_from,
            "synthetic_admitted": len(selection.added),
            "synthetic_copies": len(selection.copies),
        }
    frozen = versions.freeze(ws, catalog, character, run_id, select=lambda _: members, extra=extra)
    catalog.update_iteration(character.name, number, run_id, dataset_version=frozen.version_id)
    return frozen.version_id

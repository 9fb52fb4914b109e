"""Which editor carries out which prompt, and which edit jobs an enrichment still has to do: every source x prompt
x seed not done yet, or, aimed at the set's gaps (``fill_gaps``), the sources x prompts that fill its thinnest
coverage bins first within a budget (docs/coverage.md)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flenwheel.catalog import Catalog, now, sha256_json
from flenwheel.core.config import Character, ConfigError, CoverageSettings, PromptEntry
from flenwheel.core.coverage import DISTINCT, Coverage, Gap, bin_column, coverage_of, rank_gaps
from flenwheel.core.types import COVERAGE_AXES
from flenwheel.editing.jobs import EditJob, pending_jobs
from flenwheel.editing.registry import MODEL_EDITORS, make_editor
from flenwheel.models.loading import ModelManager
from flenwheel.store.workspace import Workspace

log = logging.getLogger(__name__)


def editor_plan(
    choice: str, character: Character, prompts: Sequence[PromptEntry], library: Sequence[PromptEntry]
) -> dict[str, list[PromptEntry]]:
    """Which editor carries out which of ``prompts``: all of them for a named editor; for ``configured``, each
    prompt category's editor from the character's ``editors`` (``default`` for the categories it does not name).

    A routed category that no prompt of the ``library`` has is a typo that would silently fall back to the
    default editor, so it is an error naming the key.
    """
    if choice != "configured":
        return {choice: list(prompts)}
    routing = character.editors
    known = {p.category for p in library}
    for category in routing.categories:
        if category not in known:
            raise ConfigError(
                f"characters/{character.name}.yaml: editors.categories.{category}: no prompt has this category "
                f"(categories: {', '.join(sorted(known))})"
            )
    plan: dict[str, list[PromptEntry]] = {}
    for prompt in prompts:
        plan.setdefault(routing.categories.get(prompt.category, routing.default), []).append(prompt)
    return plan


@dataclass(frozen=True)
class Aim:
    """One source x prompt an aimed enrichment chose, and the gap it was chosen for (``continued``: a source x prompt
    an interrupted run had started, finished first)."""

    axis: str
    bin: str
    prompt_id: str
    source_id: str
    editor: str
    jobs: int
    continued: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tried:
    """An aimed edit already made by one of the planning editors: its job's candidate, and whether it still waits
    for review."""

    editor: str
    source_id: str
    prompt_id: str
    undecided: bool


def _fills(gap: Gap, prompt: PromptEntry, source_bins: dict[str, Any], names: set[str]) -> bool:
    """Whether editing a source with these bins by ``prompt`` is expected to add to ``gap``."""
    aimed = prompt.adds.get(gap.axis)
    if aimed is None:
        return False
    if gap.bin == DISTINCT:
        return aimed not in names  # a new outfit or background
    measured = source_bins.get(gap.axis)
    # a source already in the bin adds nothing there; one whose bin is unknown (no face) cannot be turned or framed
    return aimed == gap.bin and measured is not None and measured != gap.bin


def aim_at_gaps(
    coverage: Coverage,
    source_bins: dict[str, dict[str, Any]],
    candidates: Sequence[tuple[str, EditJob]],
    settings: CoverageSettings,
    budget: int | None,
    library: dict[str, PromptEntry] | None = None,
    tried: Sequence[Tried] = (),
) -> tuple[list[tuple[str, EditJob]], list[Aim]]:
    """Choose from ``candidates`` ((editor, job) pairs not done yet) the sources x prompts that fill the thinnest
    gaps of ``coverage`` first: at most ``budget`` jobs waiting for review (None: until no gap can be filled).

    Greedy: the gaps are ranked again after every choice (:func:`~flenwheel.core.coverage.rank_gaps`), counting each
    chosen job as one image in the bins its prompt aims at (before anyone knows whether it lands); the thinnest gap
    that some unused source x prompt can fill gets the one whose source has the fewest jobs so far (spread over the
    photos), then the first by source id and library order. A source already in the aimed bin is not chosen for it;
    a source x prompt is planned with all its seeds or not at all.

    ``tried``: aimed edits these editors already made (``coverage`` leaves them out). Each counts in the bins its
    prompt aims at whatever became of it, so the plan depends on the sources and on what was tried, never on a
    review: an interrupted run planned again ends where an uninterrupted one would, and a run after the review
    plans nothing it tried before. Those still waiting for review count against ``budget``, and a source x prompt
    an interrupted run started is finished first.
    """
    pairs: dict[tuple[str, str, str], list[EditJob]] = {}
    prompts: dict[str, PromptEntry] = dict(library or {})
    for editor, job in candidates:
        pairs.setdefault((editor, job.parent_id, job.prompt.id), []).append(job)
        prompts.setdefault(job.prompt.id, job.prompt)
    order = {pid: i for i, pid in enumerate(prompts)}
    counts = {axis: dict(bins) for axis, bins in coverage.counts.items()}
    names = {axis: set(found) for axis, found in coverage.variety.items()}
    per_source: Counter[str] = Counter()

    def count(prompt: PromptEntry, source: str, n: int) -> None:
        per_source[source] += n
        for axis, value in prompt.adds.items():
            if axis in COVERAGE_AXES:
                counts.setdefault(axis, {})[value] = counts.get(axis, {}).get(value, 0) + n
            else:
                names.setdefault(axis, set()).add(value)

    for t in tried:
        count(prompts[t.prompt_id], t.source_id, 1)
    waiting = sum(t.undecided for t in tried)
    chosen: list[tuple[str, EditJob]] = []
    aims: list[Aim] = []

    def fits(jobs: Sequence[EditJob]) -> bool:
        return budget is None or waiting + len(chosen) + len(jobs) <= budget

    def take(key: tuple[str, str, str], axis: str, name: str, continued: bool = False) -> None:
        jobs = pairs.pop(key)
        chosen.extend((key[0], j) for j in jobs)
        count(prompts[key[2]], key[1], len(jobs))
        aims.append(Aim(axis, name, key[2], key[1], key[0], len(jobs), continued))

    started = {(t.editor, t.source_id, t.prompt_id) for t in tried}
    for key in [k for k in pairs if k in started and prompts[k[2]].adds]:
        if fits(pairs[key]):
            axis, name = next(iter(prompts[key[2]].adds.items()))
            take(key, axis, name, continued=True)
    while True:
        variety = {axis: dict.fromkeys(found, 1) for axis, found in names.items()}
        n = coverage.n + len(tried) + len(chosen)
        pick = None
        for gap in rank_gaps(counts, variety, n, settings):
            options = [
                key
                for key, jobs in pairs.items()
                if fits(jobs) and _fills(gap, prompts[key[2]], source_bins.get(key[1], {}), names.get(gap.axis, set()))
            ]
            if options:
                pick = gap, min(options, key=lambda k: (per_source[k[1]], k[1], order[k[2]], k[0]))
                break
        if pick is None:
            return chosen, aims
        gap, key = pick
        take(key, gap.axis, gap.bin)


def plan_enrichment(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    choice: str,
    profile: str | None,
    prompt_ids: Sequence[str] | None,
    seeds: int,
    sources: Sequence[str] | None = None,
    fill_gaps: bool = False,
    budget: int | None = None,
    run_id: str | None = None,
) -> list[tuple[str, list[EditJob]]]:
    """The edit jobs (source x prompt x seed 0..seeds-1) still to do, per editor, as ``choice`` routes the prompts.

    Model editors' job keys depend on the profile's settings, not on a loaded model, so nothing is loaded to plan.
    A named editor skips the prompts it cannot carry out; a configured route that sends a prompt to an editor that
    cannot carry it out is an error naming the character's file.

    With ``fill_gaps`` only the jobs :func:`aim_at_gaps` chooses are planned, at most ``budget`` (default
    ``coverage.budget``), against the coverage of the set the next version would hold plus the candidates waiting
    for review that passed their checks (the sources must have been assessed: their bins say what each can add);
    the plan (that coverage and what was aimed at) is recorded in ``enrichment_plans`` for the report.
    """
    library = ws.prompt_library(character)
    unknown = sorted(set(prompt_ids or []) - set(library))
    if unknown:
        raise ConfigError(f"unknown prompt id(s) {', '.join(unknown)}; known: {', '.join(sorted(library))}")
    prompts = [library[p] for p in prompt_ids] if prompt_ids else list(library.values())
    work = []
    for name, routed in editor_plan(choice, character, prompts, list(library.values())).items():
        planner = ModelManager(ws, ws.profile(profile)) if name in MODEL_EDITORS else None
        editor = make_editor(name, ws, planner, catalog, character)
        refused = [p.category for p in routed if not editor.supports(p)]
        if choice == "configured" and refused:
            raise ConfigError(
                f"characters/{character.name}.yaml: editors: the {name} editor cannot carry out "
                f"{', '.join(sorted(set(refused)))} prompts; route them to another editor"
            )
        jobs = pending_jobs(catalog, character.name, editor, routed, list(range(seeds)), sources)
        work.append((name, jobs, sorted({p.category for p in routed})))
    if fill_gaps:
        work = _aimed(ws, catalog, character, work, budget or ws.settings.coverage.budget, run_id)
    for name, jobs, categories in work:
        log.info(
            f"enrichment of {character.name} with the {name} editor: {len(jobs)} job(s) to do ({', '.join(categories)})"
        )
    return [(name, jobs) for name, jobs, _ in work]


def _aimed(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    work: list[tuple[str, list[EditJob], list[str]]],
    budget: int | None,
    run_id: str | None,
) -> list[tuple[str, list[EditJob], list[str]]]:
    """``work`` narrowed to the jobs aimed at the set's gaps, one budget over every editor; the plan recorded."""
    settings = ws.settings.coverage
    library = ws.prompt_library(character)
    editors = {name for name, _, _ in work}
    made = [
        r
        for r in catalog.aimed_edits(character.name)
        if r["editor"] in editors and r["prompt_id"] in library and library[r["prompt_id"]].adds
    ]
    tried = [Tried(r["editor"], r["source_id"], r["prompt_id"], r["decision"] is None) for r in made]
    # the set the next version would hold and the candidates waiting that passed their checks, but not these
    # editors' aimed edits: they count by what they aimed at (aim_at_gaps), so reviews do not change the plan
    mine = {r["image_id"] for r in made}
    rows = [r for r in catalog.coverage_rows(character.name, pending=True) if r["image_id"] not in mine]
    coverage = coverage_of(rows, settings)
    parents = sorted({j.parent_id for _, jobs, _ in work for j in jobs})
    bins = {i: {axis: r[bin_column(axis)] for axis in COVERAGE_AXES} for i, r in catalog.attributes_of(parents).items()}
    candidates = [(name, j) for name, jobs, _ in work for j in jobs]
    chosen, aims = aim_at_gaps(coverage, bins, candidates, settings, budget, library, tried)
    gaps = ", ".join(g.key for g in coverage.gaps[:6]) or "none"
    aimed = ", ".join(sorted({f"{a.axis}:{a.bin}" for a in aims})) or "nothing (no prompt fills a gap)"
    log.info(
        f"coverage of {character.name}: {coverage.n} image(s), {len(tried)} aimed edit(s) made before, thinnest "
        f"gaps {gaps}; aimed at {aimed}"
    )
    catalog.add_plan(
        {
            # one plan per run and character (a run re-executed after a review keeps its first plan)
            "plan_id": f"{run_id}:{character.name}" if run_id else sha256_json([character.name, str(now())]),
            "character": character.name,
            "editor": ",".join(sorted(editors)),
            "budget": budget,
            "jobs": len(chosen),
            "coverage": coverage.as_json() | {"tried": len(tried)},
            "aims": [a.as_json() for a in aims],
            "run_id": run_id,
        }
    )
    # each editor's jobs in the order they were chosen: the thinnest gap's edits run first
    return [(name, [j for editor, j in chosen if editor == name], categories) for name, _, categories in work]

"""Which editor carries out which prompt, and which edit jobs an enrichment still has to do."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, ConfigError, PromptEntry
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


def plan_enrichment(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    choice: str,
    profile: str | None,
    prompt_ids: Sequence[str] | None,
    seeds: int,
    sources: Sequence[str] | None = None,
) -> list[tuple[str, list[EditJob]]]:
    """The edit jobs (source x prompt x seed 0..seeds-1) still to do, per editor, as ``choice`` routes the prompts.

    Model editors' job keys depend on the profile's settings, not on a loaded model, so nothing is loaded to plan.
    A named editor skips the prompts it cannot carry out; a configured route that sends a prompt to an editor that
    cannot carry it out is an error naming the character's file.
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
        categories = ", ".join(sorted({p.category for p in routed}))
        log.info(f"enrichment of {character.name} with the {name} editor: {len(jobs)} job(s) to do ({categories})")
        work.append((name, jobs))
    return work

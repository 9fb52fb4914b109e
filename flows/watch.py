"""``flenwheel watch``: an enrichment run as soon as new photos land in a character's source folder.

Each burst of files (:class:`~flenwheel.store.watch.FolderWatch`: one change once the folder has been quiet for a
few seconds) emits the Prefect event ``flenwheel.photos.landed`` (resource ``flenwheel.character.<name>``; a
deployment trigger or an automation can act on it, docs/scale.md) and runs the ``nightly-enrich`` flow for that
character now. The run is the nightly one: it ingests what is new, enriches the pending jobs by their job keys under
the character's lock, so a burst that the nightly run already took adds nothing and the two never work on a character
at once. A character that is busy with another run is tried again after another quiet period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prefect.events import emit_event

from flenwheel.flows.enrich import NightlyOutcome, NightlyParams, nightly_enrich
from flenwheel.store.watch import FolderWatch, folder_signature
from flenwheel.store.workspace import Workspace

log = logging.getLogger("flenwheel.flows.watch")
EVENT = "flenwheel.photos.landed"


@dataclass
class WatchRun:
    """One run started by the watcher: the character and what the nightly flow did with it."""

    character: str
    outcome: NightlyOutcome


def watch(
    ws: Workspace,
    params: NightlyParams,
    quiet_s: float = 5.0,
    poll_s: float = 1.0,
    runs: int | None = None,
    on_run: Callable[[WatchRun], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    emit_only: bool = False,
    on_event: Callable[[str, int], None] | None = None,
) -> list[WatchRun]:
    """Watch the source folders of ``params.characters`` (default: all) until interrupted or ``runs`` runs started.

    ``emit_only``: emit the event and start nothing here; the ``nightly-enrich`` deployment that ``flenwheel serve``
    serves runs on it (its trigger, :func:`flenwheel.flows.deployments.deployments`), on whatever machine serves it.
    ``on_event(character, files)`` is told of every event emitted."""
    names = params.characters or ws.character_names()
    folders = {name: ws.source_dir(ws.character(name)) for name in names}
    watcher = FolderWatch(folders, quiet_s)
    log.info("watching " + ", ".join(f"{n} ({f})" for n, f in folders.items()) + f"; quiet period {quiet_s:g} s")
    if on_ready:
        on_ready()
    done: list[WatchRun] = []
    emitted = 0
    while runs is None or (emitted if emit_only else len(done)) < runs:
        time.sleep(poll_s)
        watcher.poll()
        for name in watcher.due():
            files = len(folder_signature(folders[name]))
            emit_event(EVENT, resource={"prefect.resource.id": f"flenwheel.character.{name}"}, payload={"files": files})
            emitted += 1
            if on_event:
                on_event(name, files)
            if emit_only:
                continue
            one = params.model_copy(update={"characters": [name]})
            outcome = nightly_enrich(one, str(ws.root), str(ws.configs_dir))[0]
            if outcome.busy:
                log.info(f"{name}: {outcome.skipped}; trying again after the next quiet period")
                watcher.again(name)
                continue
            run = WatchRun(name, outcome)
            done.append(run)
            if on_run:
                on_run(run)
    return done

"""``flenwheel watch``: a burst of new photos in a character's source folder starts one enrichment run."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from flenwheel.catalog import Catalog
from flenwheel.store.watch import FolderWatch
from flenwheel.store.workspace import Workspace


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_one_change_once_the_folder_is_quiet(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "old.jpg").write_bytes(b"x")  # there before watching: the nightly run's business
    clock = Clock()
    watch = FolderWatch({"obama": folder}, quiet_s=5.0, clock=clock)
    watch.poll()
    assert watch.due() == []
    for i in range(3):  # a burst: one file a second
        (folder / f"new_{i}.jpg").write_bytes(b"y" * (i + 1))
        (folder / f"notes_{i}.txt").write_text("not a photo")
        clock.now += 1.0
        watch.poll()
        assert watch.due() == []
    clock.now += 4.9
    watch.poll()
    assert watch.due() == []
    clock.now += 0.2
    assert watch.due() == ["obama"]
    assert watch.due() == []  # once per burst
    watch.again("obama")  # the character was busy: asked again after another quiet period
    clock.now += 5.0
    assert watch.due() == ["obama"]
    (folder / "notes_0.txt").write_text("changed, still not a photo")
    clock.now += 10
    watch.poll()
    assert watch.due() == []


def test_watch_starts_one_enrichment_run_for_a_burst_of_photos(prefect_harness, ws: Workspace, faces: Path) -> None:
    from flenwheel.flows.enrich import NightlyParams
    from flenwheel.flows.watch import watch

    params = NightlyParams(characters=["obama"], editor="augment", prompts=["bg-blue"], seeds=1, review="auto")
    ready, runs = threading.Event(), []
    thread = threading.Thread(
        target=lambda: runs.extend(watch(ws, params, quiet_s=1.5, poll_s=0.2, runs=1, on_ready=ready.set)), daemon=True
    )
    thread.start()
    assert ready.wait(60)
    inbox = ws.inbox_dir("obama")
    inbox.mkdir(parents=True)
    for name in ("obama_1.jpg", "obama_2.jpg", "obama_3.jpg"):  # a burst, as a copy or a sync client lands it
        shutil.copy(faces / "obama" / name, inbox / name)
        time.sleep(0.3)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert len(runs) == 1 and runs[0].character == "obama"
    outcome = runs[0].outcome
    assert outcome.new_photos == 3 and outcome.enrichment is not None and outcome.enrichment.images == 3
    catalog = Catalog(ws.catalog_path)
    assert len(catalog.rows("SELECT * FROM runs WHERE flow = 'flow:nightly-enrich'")) == 1
    assert len(catalog.source_images("obama")) == 3


def test_emit_only_reports_the_burst_and_the_served_nightly_deployment_runs_on_it(
    prefect_harness, ws: Workspace, faces: Path
) -> None:
    """With ``--emit-only`` the watcher starts nothing itself: it emits ``flenwheel.photos.landed`` once per burst,
    and the nightly-enrich deployment that ``flenwheel serve`` serves carries the trigger that runs on it."""
    from flenwheel.flows.deployments import deployments
    from flenwheel.flows.enrich import NightlyParams
    from flenwheel.flows.watch import EVENT, watch

    inbox = ws.inbox_dir("obama")
    inbox.mkdir(parents=True)

    def land() -> None:  # once the watcher has looked at the folder: a new photo, not one it found there
        shutil.copy(faces / "obama" / "obama_1.jpg", inbox / "obama_1.jpg")

    seen: list[tuple[str, int]] = []
    ran = watch(ws, NightlyParams(characters=["obama"]), quiet_s=0.2, poll_s=0.05, runs=1, emit_only=True,
                on_ready=land, on_event=lambda name, files: seen.append((name, files)))  # fmt: skip
    assert ran == [] and seen == [("obama", 1)]
    assert not ws.catalog_path.exists()  # nothing ran here: no run, not even a catalog
    [trigger] = next(d for d in deployments(ws) if d.name == "nightly-enrich").triggers
    assert trigger.expect == {EVENT} and trigger.match.model_dump()["prefect.resource.id"] == "flenwheel.character.*"

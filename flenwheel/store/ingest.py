"""Bring photos into the store and the catalog, in batches, reporting every file's outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flenwheel.catalog import Catalog, ImageRecord
from flenwheel.core.config import validate_character_name
from flenwheel.store.objects import ImageRejected, StoredImage, expand_paths, ingest_file, remove_if_unreferenced
from flenwheel.store.workspace import Workspace

Status = Literal["ingested", "duplicate", "rejected"]


@dataclass(frozen=True)
class IngestOutcome:
    path: Path
    status: Status
    image_id: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


def ingest_paths(
    ws: Workspace,
    catalog: Catalog,
    character: str,
    paths: Sequence[Path],
    run_id: str | None,
    origin: str = "source",
    batch_size: int = 32,
    on_outcome: Callable[[IngestOutcome], None] | None = None,
) -> list[IngestOutcome]:
    """Ingest files and folders for ``character``; good files are kept even when others are rejected.

    Each batch is one catalog transaction. If that transaction fails, the files it had just placed in the
    store are removed again, so neither the store nor the catalog is left half-written.
    """
    validate_character_name(character)
    files = expand_paths(list(paths))
    outcomes: list[IngestOutcome] = []
    report = on_outcome or (lambda _o: None)
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        stored: list[tuple[Path, StoredImage]] = []
        early: list[IngestOutcome] = []
        try:
            seen: dict[str, Path] = {}
            for path in batch:
                try:
                    s = ingest_file(ws.root, path, ws.settings.store)
                except ImageRejected as e:
                    early.append(IngestOutcome(path, "rejected", reason=str(e)))
                    continue
                if s.image_id in seen:
                    early.append(
                        IngestOutcome(path, "duplicate", s.image_id, f"same picture as {seen[s.image_id].name}")
                    )
                    continue
                seen[s.image_id] = path
                stored.append((path, s))
            records, batch_outcomes = _classify(catalog, character, origin, stored) if stored else ([], [])
            if records:
                catalog.add_images(records, run_id)
        except BaseException:
            # Nothing half-written: files this batch placed in the store go again.
            for _, s in stored:
                remove_if_unreferenced(ws.root, s)
            raise
        for o in [*early, *batch_outcomes]:
            outcomes.append(o)
            report(o)
    return outcomes


def _classify(
    catalog: Catalog, character: str, origin: str, stored: list[tuple[Path, StoredImage]]
) -> tuple[list[ImageRecord], list[IngestOutcome]]:
    """Split stored files into new records and outcomes, by who already owns each image."""
    owners = catalog.image_owners([s.image_id for _, s in stored])
    records: list[ImageRecord] = []
    outcomes: list[IngestOutcome] = []
    for path, s in stored:
        owner = owners.get(s.image_id)
        if owner is None:
            records.append(ImageRecord(s.image_id, character, origin, s.relpath, s.width, s.height, path.name))
            outcomes.append(IngestOutcome(path, "ingested", s.image_id))
        elif owner == character:
            outcomes.append(IngestOutcome(path, "duplicate", s.image_id, "already in the catalog"))
        else:
            outcomes.append(IngestOutcome(path, "rejected", s.image_id, f"already catalogued for character {owner!r}"))
    return records, outcomes

"""Source folders watched for new photos, with a quiet period: a burst of files (a card reader, a sync client) is one
change, reported once no file has appeared or grown for ``quiet_s``.

The folders are polled (names, sizes and modification times of their image files) rather than watched through
inotify: a source folder is often a network share or a synced folder, where kernel notifications do not arrive, and
listing a folder of a few hundred photos once a second costs next to nothing. What happens on a change (an
enrichment run) is the flow's business (:mod:`flenwheel.flows.watch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flenwheel.store.objects import IMAGE_SUFFIXES

Signature = frozenset[tuple[str, int, int]]  # (relative path, size, mtime_ns) of each image file


def folder_signature(folder: Path) -> Signature:
    """What is in ``folder`` now (image files only, recursively); empty when it does not exist."""
    if not folder.is_dir():
        return frozenset()
    out = set()
    for p in folder.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                st = p.stat()
            except OSError:  # removed while listing
                continue
            out.add((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return frozenset(out)


@dataclass
class FolderWatch:
    """Each key's folder, polled; :meth:`due` names the keys whose folder changed and then stayed quiet."""

    folders: Mapping[str, Path]
    quiet_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    seen: dict[str, Signature] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)  # key -> when its folder last changed, while pending

    def __post_init__(self) -> None:
        # What is there when watching starts is the nightly run's business, not a new arrival.
        self.seen = {key: folder_signature(folder) for key, folder in self.folders.items()}

    def poll(self) -> None:
        """Look at every folder once; a change (re)starts that key's quiet period."""
        now = self.clock()
        for key, folder in self.folders.items():
            current = folder_signature(folder)
            if current != self.seen[key]:
                self.seen[key] = current
                self.changed_at[key] = now

    def due(self) -> list[str]:
        """Keys whose folder changed and has been quiet for ``quiet_s`` (each reported once per burst)."""
        now = self.clock()
        ready = sorted(k for k, at in self.changed_at.items() if now - at >= self.quiet_s)
        for key in ready:
            del self.changed_at[key]
        return ready

    def again(self, key: str) -> None:
        """Report ``key`` again after another quiet period (its run could not start: the character was busy)."""
        self.changed_at[key] = self.clock()

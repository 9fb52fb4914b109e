"""One iteration of a character at a time: an OS file lock per character under ``<root>/locks/``.

The lock is held only while a flow *works* (edits, trains, generates), never while it waits at a review gate:
a suspended run holds no process and a paused one has released it, so waiting for people never blocks
another run, and a crashed process frees its lock with the process. The lock file names the holder, so the
refusal says which run to look at.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from flenwheel.core.config import validate_character_name
from flenwheel.core.errors import FlenwheelError
from flenwheel.store.workspace import Workspace


class CharacterBusy(FlenwheelError):
    """Another run is working on this character right now."""


@contextmanager
def character_lock(ws: Workspace, character: str, holder: str) -> Iterator[None]:
    """Hold the character's lock for the block, or raise :class:`CharacterBusy` at once."""
    path = ws.root / "locks" / f"{validate_character_name(character)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise CharacterBusy(
                f"another run is working on {character} ({other}); two iterations of one character never run at "
                "once: wait for it to finish or reach its review gate, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"holder": holder, "pid": os.getpid()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

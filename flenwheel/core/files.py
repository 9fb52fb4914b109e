"""Files written whole or not at all, and found again after a kill.

An atomic write goes to a temporary sibling named ``.<final name>.tmp-<pid>-<random>``, is flushed to disk and
renamed: readers see the old file or the new one, never part of it. A later write of the same name removes the
leftovers of writers that are gone (killed), and ``flenwheel doctor`` finds any others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from flenwheel.core.errors import writing

# A temporary file or folder of an atomic write is named ".<final name>.tmp-<pid>-<random>": a later write of
# the same name removes the leftovers of writers that are gone (killed), and doctor finds any others.
TEMP_MARK = ".tmp-"


def temp_prefix(final_name: str) -> str:
    """The name prefix of this process's temporary sibling for an atomic write of ``final_name``."""
    return f".{final_name}{TEMP_MARK}{os.getpid()}-"


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def writer_gone(path: Path) -> bool:
    """Whether the process that made the temporary ``path`` has ended (it can no longer finish the write)."""
    try:
        pid = int(path.name.split(TEMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return True  # not ours, or from before pids were in the name
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def clear_leftovers(final: Path) -> None:
    """Remove temporary siblings of ``final`` whose writers are gone (a killed command's half-written copy)."""
    for stale in final.parent.glob(f".{glob_escape(final.name)}{TEMP_MARK}*"):
        if writer_gone(stale):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, flush it to disk, then rename: readers see the old file or the new
    one, never part of it, and a kill or a full disk leaves no partial file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (weights are gigabytes)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""The errors a user can act on, and how a full disk is reported.

Every module raises its own subclass of :class:`FlenwheelError` (ConfigError, CatalogError, ImageRejected,
IdentityError, ModelError, ...) with a message meant for the user as it is; the CLI prints such errors as one
line and exits with status 2 (a usage or configuration problem). A full disk is not the user's mistake in
calling the command: :class:`DiskFull` names what could not be written and exits with status 1; everything
flenwheel writes is atomic, so nothing is left half-written and the same command finishes once space is freed.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FlenwheelError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""

    exit_code = 2


class DiskFull(FlenwheelError, OSError):
    """No space left on the device (or quota) while writing something."""

    exit_code = 1


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


NEARLY_FULL_BYTES = 4 << 20


@contextmanager
def writing(what: Path) -> Iterator[None]:
    """Turn running out of space while writing ``what`` into a :class:`DiskFull` that names it.

    Libraries report a full disk their own way (torch: a RuntimeError from its stream writer, safetensors its own
    error type), so a failure while the device holding ``what`` is (nearly) full counts as a full disk too.
    """
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or _nearly_full(what):
            raise DiskFull(f"no space left on the device: could not write {what}; free space and run again") from e
        raise


def _nearly_full(path: Path) -> bool:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < NEARLY_FULL_BYTES


class AwaitingReview(Exception):
    """Raised to stop a run that waits for human review; the run is recorded as ``awaiting_review``."""

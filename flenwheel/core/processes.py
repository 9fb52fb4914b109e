"""Child processes that die with their parent.

A SIGKILLed process (the OOM killer, a power cut of the terminal, ``kill -9``) runs no exit hooks, so its
children would live on: a local Prefect API server, identity worker processes. Each such child calls
:func:`exit_when_orphaned` first thing, and exits as soon as its parent is gone, however the parent ended.
"""

from __future__ import annotations

import os
import threading
import time


def exit_when_orphaned(parent: int | None = None, interval_s: float = 0.5) -> None:
    """Exit this process (status 0, no clean-up) within ``interval_s`` once ``parent`` is no longer its parent.

    Pass ``parent`` from the parent (its ``os.getpid()``): a child that asks ``os.getppid()`` itself after a slow
    start-up may already have been handed to another process and would watch that one forever.
    """
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()

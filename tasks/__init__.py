"""Prefect tasks: thin, batched wrappers around the engine (many images per task run).

Each task takes the flow's :class:`~flenwheel.store.workspace.RunContext` (plain values: root, configs, character,
profile, run id) and opens what it needs through the process's caches (the workspace, the model manager of
:mod:`flenwheel.models.runtime`); the catalog, not Prefect's result store, is the record of what was done, so
``cache_policy=NONE`` everywhere. Each task logs what it did through the ``flenwheel`` loggers, which Prefect sends
to the run's logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive batches of at most ``size`` (the unit of one task run and one catalog write)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]

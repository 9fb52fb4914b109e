"""FiftyOne review: one persistent dataset per character, the App as a service, decisions read back.

FiftyOne reads its configuration when it is first imported, so every module here gets it through
:func:`fiftyone`, which first points the bundled MongoDB at ``<root>/fiftyone-db`` (unless
``FIFTYONE_DATABASE_URI`` names another server) and turns off usage tracking: a local review tool sends no
usage data and shows no consent banner (a value the user set wins).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from flenwheel.store.workspace import Workspace


def configure(ws: Workspace) -> None:
    """Environment for FiftyOne; a no-op once fiftyone has been imported (its config is then fixed)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the bundled mongod 6.0 is "oldest supported"
    if "FIFTYONE_DATABASE_URI" not in os.environ:
        os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(ws.root / "fiftyone-db"))


def fiftyone(ws: Workspace) -> ModuleType:
    """The ``fiftyone`` module, configured for this workspace before its first import."""
    configure(ws)
    return importlib.import_module("fiftyone")

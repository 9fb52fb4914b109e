"""What tasks share within one worker process: workspaces, and one model manager per profile."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.config import Workspace


@lru_cache(maxsize=8)
def workspace(root: str, configs: str) -> Workspace:
    return Workspace(root=root, configs=configs)


def catalog(ws: Workspace) -> Catalog:
    return Catalog(ws.catalog_path, lock_timeout_s=ws.settings.catalog.lock_timeout_s)


_MANAGERS: dict[tuple[str, str], Any] = {}


def model_manager(ws: Workspace, profile: str | None, run_id: str | None = None) -> Any:
    """The process's model manager for this root and profile (so a loaded pipeline serves many batches).

    Peak memory of each stage is recorded under the latest ``run_id`` given.
    """
    from flenwheel.models import ModelManager

    prof = ws.profile(profile)
    key = (str(ws.root), prof.name)
    if key not in _MANAGERS:
        for other in _MANAGERS.values():
            other.release()  # one large model resident per process
        _MANAGERS.clear()
        _MANAGERS[key] = ModelManager(ws, prof, catalog(ws))
    manager = _MANAGERS[key]
    manager.run_id = run_id or manager.run_id
    return manager


def release_models() -> None:
    for manager in _MANAGERS.values():
        manager.release()
    _MANAGERS.clear()

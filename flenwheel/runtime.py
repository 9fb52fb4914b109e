"""What the work of one process shares: workspaces by root and one model manager per profile.

Prefect tasks take plain values (paths, names, ids) and open what they need through these, so a worker that
runs many batches loads each model and parses each config once.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from flenwheel.workspace import Workspace

if TYPE_CHECKING:
    from flenwheel.critic import Critic
    from flenwheel.models import ModelManager

T = TypeVar("T")


@lru_cache(maxsize=8)
def workspace(root: str, configs: str) -> Workspace:
    return Workspace(root=root, configs=configs)


_MANAGERS: dict[tuple[str, str], ModelManager] = {}


def model_manager(ws: Workspace, profile: str | None, run_id: str | None = None) -> ModelManager:
    """The process's model manager for this root and profile (so a loaded pipeline serves many batches).

    Peak memory of each stage is recorded under the latest ``run_id`` given.
    """
    from flenwheel.models import ModelManager  # torch and diffusers: only processes that run models pay for them

    prof = ws.profile(profile)
    key = (str(ws.root), prof.name)
    if key not in _MANAGERS:
        for other in _MANAGERS.values():
            other.release()  # one large model resident per process
        _MANAGERS.clear()
        _MANAGERS[key] = ModelManager(ws, prof, ws.catalog())
    manager = _MANAGERS[key]
    manager.run_id = run_id or manager.run_id
    return manager


def release_models() -> None:
    for manager in _MANAGERS.values():
        manager.release()
    _MANAGERS.clear()
    _CRITICS.clear()


_CRITICS: dict[tuple[str, str, str], Critic] = {}
# Critics wrapping a resident editor's text encoder, by pipeline: weak keys, so a released pipeline takes its entry
# (and the last reference to its text encoder) with it.
_SHARED_CRITICS: weakref.WeakKeyDictionary[Any, Critic | None] = weakref.WeakKeyDictionary()


def vlm(ws: Workspace, profile: str | None, ref: str) -> Critic:
    """The process's Qwen2.5-VL for ``ref``, shared by the critic and the captioner.

    ``editor`` is the text encoder of the profile's Qwen-Image-Edit snapshot (:func:`flenwheel.critic.critic_source`):
    while this process holds that pipeline (enrichment with the qwen editor) its loaded text encoder answers, so
    no second copy of the 7B model is loaded beside the editor (24 GB hold one, not both); otherwise the model is
    loaded once and kept until :func:`release_models`.
    """
    from flenwheel.critic import Critic, critic_source
    from flenwheel.models import resolve_model

    prof = ws.profile(profile)
    manager = _MANAGERS.get((str(ws.root), prof.name))
    loaded = manager.current if manager is not None else None
    if ref == "editor" and loaded is not None and loaded.kind == "qwen-image-edit":
        if loaded.pipe not in _SHARED_CRITICS:  # once per resident pipeline, not once per check
            source = critic_source(loaded.model.path)
            # the checkpoint must have its output layer for the resident weights to answer
            _SHARED_CRITICS[loaded.pipe] = Critic.from_pipeline(loaded.pipe, source.model) if source.reused else None
        shared = _SHARED_CRITICS[loaded.pipe]
        if shared is not None:
            return shared
    key = (str(ws.root), prof.name, ref)
    if key not in _CRITICS:
        source = str(resolve_model(prof.editor.model, "qwen-image-edit", ws).path) if ref == "editor" else ref
        _CRITICS[key] = Critic.from_pretrained(source, device=prof.device)
    return _CRITICS[key]


def critic(ws: Workspace, profile: str | None) -> Critic:
    """The VLM critic of ``verify.critic``."""
    return vlm(ws, profile, ws.settings.verify.critic or "")


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive batches of at most ``size`` (the unit of one task run and one catalog write)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]

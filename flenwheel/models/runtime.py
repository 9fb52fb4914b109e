"""What the work of one process shares: one model manager per profile (so a worker that runs many batches loads
each model once) and the VLM of the critic and the captions, each loaded under the profile's memory rules."""

from __future__ import annotations

import gc
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flenwheel.core.config import Profile, StageSettings
from flenwheel.models.memory import Footprint, footprint, may_sit_together, precision_tag, with_precision
from flenwheel.store.workspace import Workspace

if TYPE_CHECKING:
    from flenwheel.models.critic import Critic
    from flenwheel.models.loading import ModelManager

log = logging.getLogger(__name__)


_MANAGERS: dict[tuple[str, str], ModelManager] = {}


def model_manager(ws: Workspace, profile: str | None, run_id: str | None = None) -> ModelManager:
    """The process's model manager for this root and profile (so a loaded pipeline serves many batches).

    Peak memory of each stage is recorded under the latest ``run_id`` given.
    """
    from flenwheel.models.loading import (
        ModelManager,  # torch and diffusers: only processes that run models pay for them
    )

    prof = ws.profile(profile)
    key = (str(ws.root), prof.name)
    if key not in _MANAGERS:
        for other in _MANAGERS.values():
            other.release()  # one large model resident per process
        _MANAGERS.clear()
        _MANAGERS[key] = ModelManager(ws, prof, ws.catalog())
        _MANAGERS[key].before_load = lambda kind, stage: _make_room(ws, prof, kind, stage)
    manager = _MANAGERS[key]
    manager.run_id = run_id or manager.run_id
    return manager


def release_models() -> None:
    for manager in _MANAGERS.values():
        manager.release()
    _MANAGERS.clear()
    _CRITICS.clear()


def release_vlms() -> None:
    """Free the VLMs this process loaded for the critic and captions (a resident pipeline stays)."""
    if _CRITICS:
        _CRITICS.clear()
        gc.collect()


@dataclass
class _Resident:
    """A VLM this process keeps loaded, and the weights it holds on the device."""

    critic: Critic
    footprint: Footprint


_CRITICS: dict[tuple[str, str, str], _Resident] = {}
# Critics wrapping a resident editor's text encoder, by pipeline: weak keys, so a released pipeline takes its entry
# (and the last reference to its text encoder) with it.
_SHARED_CRITICS: weakref.WeakKeyDictionary[Any, Critic | None] = weakref.WeakKeyDictionary()


def vlm(ws: Workspace, profile: str | None, ref: str) -> Critic:
    """The process's Qwen2.5-VL for ``ref``, shared by the critic and the captioner.

    ``editor`` is the text encoder of the profile's Qwen-Image-Edit snapshot
    (:func:`flenwheel.models.critic.critic_source`): while this process holds that pipeline (enrichment with the
    qwen editor) its loaded text encoder answers, so no second copy of the 7B model is loaded beside the editor.
    Otherwise the model is loaded under the profile's ``vlm`` rules (nf4 on 24 GB) and kept until
    :func:`release_models`; when it and the resident pipeline would not fit the profile's budget together
    (:func:`flenwheel.models.memory.may_sit_together`), the pipeline is released first and the two take turns.
    """
    from flenwheel.models.critic import Critic, critic_source, planned_footprint
    from flenwheel.models.loading import torch_dtype
    from flenwheel.models.refs import resolve_model

    prof = ws.profile(profile)
    manager = _MANAGERS.get((str(ws.root), prof.name))
    loaded = manager.current if manager is not None else None
    if ref == "editor" and loaded is not None and loaded.kind == "qwen-image-edit":
        if loaded.pipe not in _SHARED_CRITICS:  # once per resident pipeline, not once per check
            source = critic_source(loaded.model.path)
            # the checkpoint must have its output layer for the resident weights to answer
            quantised = ["text_encoder"] if "text_encoder" in loaded.stage.quantize else []
            tag = precision_tag(prof.dtype, quantised, loaded.stage.offload, whole=True)
            shared = Critic.from_pipeline(loaded.pipe, with_precision(source.model, tag)) if source.reused else None
            _SHARED_CRITICS[loaded.pipe] = shared
        shared = _SHARED_CRITICS[loaded.pipe]
        if shared is not None:
            return shared
    key = (str(ws.root), prof.name, ref)
    if key not in _CRITICS:
        source = str(resolve_model(prof.editor.model, "qwen-image-edit", ws).path) if ref == "editor" else ref
        planned = planned_footprint(source, prof.dtype, prof.vlm.quantize)
        if manager is not None and loaded is not None and planned is not None:
            verdict = may_sit_together(loaded.footprint(), planned, prof.peak_budget_gib, prof.headroom_gib)
            if not verdict.fits:
                log.warning(
                    f"the VLM does not fit beside the resident model, which is released first: {verdict.reason}"
                )
                manager.release()
        critic = Critic.from_pretrained(source, device=prof.device, dtype=torch_dtype(prof), quantize=prof.vlm.quantize)
        used = footprint(
            "critic/caption VLM", {"model": critic.model}, prof.dtype, ["model"] if prof.vlm.quantize else []
        )
        _CRITICS[key] = _Resident(critic, used)
    return _CRITICS[key].critic


def _make_room(ws: Workspace, profile: Profile, kind: str, stage: StageSettings) -> None:
    """Before a pipeline loads: release the VLMs it would not fit beside (the two then take turns)."""
    mine = [k for k in _CRITICS if k[:2] == (str(ws.root), profile.name)]
    if not mine or profile.peak_budget_gib is None:
        return
    from flenwheel.models.memory import meta_components
    from flenwheel.models.refs import resolve_model

    incoming = footprint(
        f"{kind} pipeline",
        meta_components(resolve_model(stage.model, kind, ws).path),
        profile.dtype,
        stage.quantize,
        stage.offload,
    )
    for key in mine:
        verdict = may_sit_together(incoming, _CRITICS[key].footprint, profile.peak_budget_gib, profile.headroom_gib)
        if not verdict.fits:
            log.warning(
                f"the {kind} pipeline does not fit beside the loaded VLM, which is released first: {verdict.reason}"
            )
            del _CRITICS[key]
    gc.collect()


def critic(ws: Workspace, profile: str | None) -> Critic:
    """The VLM critic of ``verify.critic``."""
    return vlm(ws, profile, ws.settings.verify.critic or "")

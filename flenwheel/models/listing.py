"""What ``flenwheel models list`` shows: every model the profiles configure, with its family, licence, gated or
not, download size and whether it is in the Hugging Face cache (or built, for a tiny twin)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flenwheel.core.config import Profile
from flenwheel.models.downloads import gb, known_download
from flenwheel.models.families import AUXILIARY, card_for, families
from flenwheel.models.licences import UNKNOWN
from flenwheel.models.refs import HUB_ID
from flenwheel.store.workspace import Workspace


@dataclass
class ListedModel:
    model: str
    family: str | None
    licence: str
    commercial: bool | None
    gated: bool
    size: str
    cached: str
    used_by: list[str] = field(default_factory=list)


def _in_cache(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo.partition("@")[0], filename, revision=repo.partition("@")[2] or None)
    return isinstance(found, str)


def _pipeline(ws: Workspace, spec: str, fam: str) -> ListedModel:
    if spec.startswith("tiny:"):
        name = spec.removeprefix("tiny:")
        card = families()[name].reference_model if name in families() else None
        built = (ws.root / "models" / "tiny" / name / "model_index.json").is_file()
        return ListedModel(
            f"{spec} (twin of {card.hub_id if card else '?'})", name,
            card.licence.name if card else UNKNOWN, card.licence.commercial if card else None, False, "built offline",
            "built" if built else "built on first use",
        )  # fmt: skip
    repo = spec.partition("@")[0]
    found = card_for(repo) if HUB_ID.match(repo) else None
    if found is None:
        return ListedModel(spec, fam, UNKNOWN, None, False, "-", "local folder" if not HUB_ID.match(repo) else "-")
    _, card = found
    size = gb(card.download_bytes) if card.download_bytes else "unknown"
    cached = "in cache" if _in_cache(spec, "model_index.json") else "not in cache"
    return ListedModel(card.hub_id, fam, card.licence.name, card.licence.commercial, card.gated, size, cached)


def configured_models(
    ws: Workspace, profiles: Sequence[Profile], identity_licences: Mapping[str, Any]
) -> list[ListedModel]:
    """One row per distinct model (pipelines, LoRAs, the VLM, identity backends), with the stages using it.

    ``identity_licences``: the face backends' licences (``flenwheel.identity.LICENCES``; identity sits above this
    layer, so the caller hands them in)."""
    library = ws.loras()
    rows: dict[str, ListedModel] = {}

    def add(row: ListedModel, user: str) -> None:
        rows.setdefault(row.model, row).used_by.append(user)

    for prof in profiles:
        for stage_name, stage in prof.stages().items():
            add(_pipeline(ws, stage.model, prof.family_of(stage_name)), f"{prof.name}/{stage_name}")
            for stack in stage.loras.values():
                for use in stack:
                    spec = library[use.name]
                    known = known_download(spec.ref, spec.weight_name)
                    cached = "-"
                    if HUB_ID.match(spec.ref.partition("@")[0]) and spec.weight_name:
                        cached = "in cache" if _in_cache(spec.ref, spec.weight_name) else "not in cache"
                    row = ListedModel(
                        f"LoRA {use.name}: {spec.ref}" + (f"/{spec.weight_name}" if spec.weight_name else ""),
                        spec.applies_to, spec.licence or UNKNOWN, spec.commercial, False,
                        gb(known.size) if known else "unknown", cached,
                    )  # fmt: skip
                    if not any(u.endswith(f"/{stage_name}") and u.startswith(prof.name) for u in
                               rows.get(row.model, row).used_by):  # fmt: skip
                        add(row, f"{prof.name}/{stage_name}")
        for name, trainer, stage_name in (
            ("trainer", prof.trainer, "generator"),
            ("edit_trainer", prof.edit_trainer, "editor"),
        ):
            if trainer.model:
                add(_pipeline(ws, trainer.model, prof.family_of(stage_name)), f"{prof.name}/{name}")
        backend = identity_licences[prof.identity_backend]
        add(
            ListedModel(
                f"identity {prof.identity_backend}: {backend.models}", None, backend.licence, backend.commercial,
                False, "in the Python packages" if prof.identity_backend != "insightface" else "model pack (manual)",
                "installed" if prof.identity_backend != "insightface" else "-",
            ),
            f"{prof.name}/identity",
        )  # fmt: skip
    for card in AUXILIARY:
        cached = "in cache" if _in_cache(card.hub_id, "config.json") else "not in cache"
        add(
            ListedModel(card.hub_id, None, card.licence.name, card.licence.commercial, card.gated,
                        gb(card.download_bytes) if card.download_bytes else "unknown", cached),
            "captions/critic VLM (when the editor's text encoder cannot answer)",
        )  # fmt: skip
    return list(rows.values())

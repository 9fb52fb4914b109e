"""The licences of the models that made a dataset version's images: editors and generators with their LoRA
stacks (from ``derivations``) and the identity backends that judged them (from ``identity_scores``).

Recorded with the version when it is frozen (``dataset_versions.licences``) and carried into every LoRA trained on
it (:mod:`flenwheel.training.export`), so the report can say whether a non-commercial model contributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.identity import LICENCES as IDENTITY_LICENCES
from flenwheel.models.licences import LicenceRecord, lora_licence, merge, model_licence
from flenwheel.store.workspace import Workspace

ROLE_OF_OP = {"edit": "editor", "generate": "generator"}


def identity_licence(backend: str) -> LicenceRecord:
    known = IDENTITY_LICENCES.get(backend)
    if known is None:
        return LicenceRecord(backend, "identity", "unknown", None, None, "not an identity backend flenwheel knows")
    return LicenceRecord(f"{backend}: {known.models}", "identity", known.licence, known.commercial, None, known.source)


def version_licences(ws: Workspace, catalog: Catalog, image_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model that made or judged ``image_ids`` (source photos are the user's own and add none; the CPU
    augment editor is code, not a model)."""
    library = ws.loras()
    records: list[LicenceRecord] = []
    for made in catalog.makers_of(image_ids):
        if made["op"] == "identity":
            records.append(identity_licence(made["model_ref"]))
            continue
        if made["op"] not in ROLE_OF_OP:
            continue
        records.append(model_licence(made["model_ref"], ROLE_OF_OP[made["op"]]))
        for lora in made["loras"]:
            records += lora_licence(lora, library, catalog)
    return [r.to_json() for r in merge(records)]

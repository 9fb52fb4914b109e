"""Licences on record: which licence each model that made something carries, and whether a business may use it.

Every catalog record of a made thing (an edit's or a generated image's ``derivations.model_ref`` and LoRA stack, a
dataset version, a trained LoRA) names its models; this module turns those names into :class:`LicenceRecord` rows
from the family cards (``flenwheel/models/<family>/family.py``), the LoRA library's ``licence`` entries
(configs/loras.yaml) and, for models flenwheel cannot identify (a local folder), an explicit *unknown*. A tiny twin
records the licence of the model it stands in for (its family's reference model), marked as a twin, so a test
profile shows what the real profile would record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flenwheel.core.config import LoraSpec
from flenwheel.models.families import card_for, families
from flenwheel.models.refs import HUB_ID


@dataclass(frozen=True)
class LicenceRecord:
    """One model that contributed, with its licence."""

    model: str  # hub id, LoRA name, identity backend, or the ref as recorded when nothing better is known
    role: str  # editor, generator, lora, identity, base model, ...
    licence: str
    commercial: bool | None  # None: unknown
    family: str | None = None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


UNKNOWN = "unknown"


def model_licence(ref: str, role: str) -> LicenceRecord:
    """The licence of a model by its recorded ref (``org/name@commit#bf16``, ``tiny:<family>@sha256:...``, a path)."""
    bare = ref.partition("#")[0]
    if bare.startswith("tiny:"):
        name = bare.removeprefix("tiny:").partition("@")[0]
        fam = families().get(name)
        if fam is not None:
            card = fam.reference_model
            return LicenceRecord(
                f"tiny:{name} (twin of {card.hub_id})", role, card.licence.name, card.licence.commercial, name,
                f"random weights standing in for {card.hub_id}; {card.licence.source}",
            )  # fmt: skip
    repo = bare.partition("@")[0]
    found = card_for(repo) if HUB_ID.match(repo) else None
    if found is not None:
        fam, card = found
        return LicenceRecord(
            card.hub_id,
            role,
            card.licence.name,
            card.licence.commercial,
            fam.name if fam else None,
            card.licence.source,
        )
    return LicenceRecord(repo, role, UNKNOWN, None, None, "not a model flenwheel knows (a local folder or new hub id)")


def lora_licence(
    record: Mapping[str, Any], library: Mapping[str, LoraSpec], catalog: Any | None = None
) -> list[LicenceRecord]:
    """The licences behind one LoRA of a stack record (``{name, ref, scale}``): a library entry's own licence; a
    LoRA flenwheel trained (``catalog:<lora_id>``) carries the licences recorded with it."""
    ref = str(record.get("ref", ""))
    if ref.startswith("catalog:") and catalog is not None:
        row = catalog.lora(ref.removeprefix("catalog:").partition("@")[0])
        if row and row.get("licences"):
            return [LicenceRecord(**{**r, "role": f"lora {row['lora_id']}: {r['role']}"}) for r in row["licences"]]
    spec = library.get(str(record.get("name", "")))
    if spec is not None and spec.licence:
        return [LicenceRecord(str(record["name"]), "lora", spec.licence, spec.commercial, spec.applies_to, spec.ref)]
    return [
        LicenceRecord(str(record.get("name") or ref), "lora", UNKNOWN, None, None, "no licence in configs/loras.yaml")
    ]


def merge(records: Iterable[LicenceRecord]) -> list[LicenceRecord]:
    """One record per (model, licence), the roles joined, in a stable order."""
    by_key: dict[tuple[str, str], LicenceRecord] = {}
    for r in records:
        key = (r.model, r.licence)
        if key in by_key:
            old = by_key[key]
            roles = sorted(set(old.role.split(", ")) | {r.role})
            by_key[key] = LicenceRecord(r.model, ", ".join(roles), r.licence, r.commercial, r.family, r.source)
        else:
            by_key[key] = r
    return sorted(by_key.values(), key=lambda r: (r.model, r.licence))


def non_commercial(records: Iterable[Mapping[str, Any] | LicenceRecord]) -> tuple[list[str], list[str]]:
    """(models whose licence forbids commercial use, models whose licence is unknown), by name."""
    rows = [r.to_json() if isinstance(r, LicenceRecord) else dict(r) for r in records]
    return (
        sorted({f"{r['model']} ({r['licence']})" for r in rows if r["commercial"] is False}),
        sorted({r["model"] for r in rows if r["commercial"] is None}),
    )

"""Model families as data: the registry finds every family's folder, each family's data is whole and consistent
with its code, profiles name families, and what each model's licence allows is on record and listed."""

from __future__ import annotations

import pytest

from flenwheel.core.config import ConfigError, LoraSpec
from flenwheel.core.config.profiles import DEFAULT_FAMILIES
from flenwheel.models import families
from flenwheel.models.families import UnknownFamily, family, load_object
from flenwheel.models.licences import lora_licence, model_licence, non_commercial
from flenwheel.models.loading import ModelManager
from flenwheel.models.refs import ModelError, pipeline_class
from flenwheel.store.workspace import Workspace
from flenwheel.training.backend import TrainingBackend, backend_class


def test_registry_finds_each_family_folder_and_its_data_is_whole() -> None:
    found = families.families()
    assert set(found) == {"flux", "qwen-image-edit", "vibe", "flux2-klein"}
    for name, fam in found.items():
        assert fam.name == name and fam.models and set(fam.nf4_components) <= set(fam.components)
        assert isinstance(pipeline_class(name), type)  # the class the family names exists
        assert callable(load_object(fam.twin))
        assert all(m.licence.source for m in fam.models)  # where each licence was read
        if fam.trainer_backend:
            cls = backend_class(name)
            assert issubclass(cls, TrainingBackend) and cls.pipeline_kind == name and cls.kind == fam.lora_kind
            assert tuple(cls.default_targets) == fam.lora_targets  # one list, on the family
            assert callable(load_object(fam.key_map))
    assert set(DEFAULT_FAMILIES.values()) <= set(found)
    with pytest.raises(UnknownFamily, match="known families are"):
        family("sdxl")
    with pytest.raises(ModelError, match="unknown model family"):
        pipeline_class("sdxl")


def test_profiles_name_families_and_stages_resolve_by_name_or_family(ws: Workspace) -> None:
    tiny, open_ = ws.profile("cpu-tiny"), ws.profile("cpu-tiny-open")
    assert tiny.family_of("generator") == "flux" and tiny.family_of("editor") == "qwen-image-edit"
    assert open_.family_of("generator") == open_.family_of("ref_editor") == "flux2-klein"
    assert set(open_.stages()) == {"editor", "generator", "vibe_editor", "ref_editor"}
    manager = ModelManager(ws, open_)
    assert manager.stage("flux2-klein")[:2] == ("generator", "flux2-klein")  # a family picks its first stage
    assert manager.stage("ref_editor")[:2] == ("ref_editor", "flux2-klein")
    with pytest.raises(ModelError, match="no stage"):
        ModelManager(ws, tiny).stage("flux2-klein")


def test_licences_of_recorded_refs() -> None:
    dev = model_licence("black-forest-labs/FLUX.1-dev@abc123#bf16,nf4:transformer", "generator")
    assert dev.commercial is False and dev.family == "flux" and "Non-Commercial" in dev.licence
    edit = model_licence("Qwen/Qwen-Image-Edit-2511@0f0f#bf16", "editor")
    assert edit.licence == "Apache-2.0" and edit.commercial is True
    twin = model_licence("tiny:flux2-klein@sha256:0123#fp32", "generator")
    assert twin.commercial is True and "twin of black-forest-labs/FLUX.2-klein-4B" in twin.model
    local = model_licence("/models/my-finetune@sha256:0123", "editor")
    assert local.commercial is None and local.licence == "unknown"
    library = {
        "fast": LoraSpec(ref="org/fast", applies_to="qwen-image-edit", licence="Apache-2.0", commercial=True),
        "odd": LoraSpec(ref="org/odd", applies_to="qwen-image-edit"),
    }
    assert lora_licence({"name": "fast", "ref": "org/fast@1"}, library)[0].commercial is True
    assert lora_licence({"name": "odd", "ref": "org/odd@1"}, library)[0].commercial is None
    forbidden, unknown = non_commercial([dev, edit, local])
    assert forbidden == ["black-forest-labs/FLUX.1-dev (FLUX.1 [dev] Non-Commercial License)"]
    assert unknown == ["/models/my-finetune"]


def test_models_list_prints_licences_and_flags_the_non_commercial(cli) -> None:
    result = cli("models", "list", "--profile", "gpu-24gb")
    assert result.exit_code == 0, result.stdout
    text = result.stdout
    assert "black-forest-labs/FLUX.1-dev" in text and "FluxPipeline" in text and "gated yes" in text
    assert "NON-COMMERCIAL" in text and "33.7 GB" in text and "not in cache" in text
    assert "identity insightface" in text
    open_ = cli("models", "list", "--profile", "gpu-24gb-open").stdout
    assert "Qwen/Qwen-Image-Edit-2511" in open_ and "black-forest-labs/FLUX.2-klein-base-4B" in open_
    assert "Flux2KleinPipeline" in open_ and "identity sface" in open_
    assert "0 not cleared for commercial use" in open_


def test_a_lora_made_for_another_model_of_the_family_is_refused(ws: Workspace) -> None:
    """2509's Lightning loads into 2511 (same shapes) but was not made for it: the profile says which key is wrong."""
    path = ws.configs_dir / "profiles" / "gpu-24gb-open.yaml"
    path.write_text(path.read_text().replace("{name: lightning-2511-4step}", "{name: lightning-4step}"))
    with pytest.raises(ConfigError, match=r"key 'editor.loras.angles.0.name': LoRA 'lightning-4step' was made for "
                       r"Qwen/Qwen-Image-Edit-2509, and the editor runs Qwen/Qwen-Image-Edit-2511"):  # fmt: skip
        ws.profile("gpu-24gb-open")

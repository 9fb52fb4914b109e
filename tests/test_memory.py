"""What sits on the GPU together, counted without a GPU; and how each model ran, on record.

The real-size figures come from the published architectures built on the meta device (flenwheel.models.twins's "real"
configs): a count of shapes, no weights. The runtime's rule is shown on the tiny twins with a budget between the
size of one of them and the size of both.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from flenwheel.models import memory, runtime, twins
from flenwheel.store.workspace import Workspace


@pytest.fixture(scope="module")
def real_size() -> dict[str, object]:
    with torch.device("meta"):
        return {kind: twins.make_pipeline(kind, 0, "real") for kind in ("vibe", "qwen-image-edit")}


def test_a_bf16_critic_beside_vibe_is_over_the_24gb_budget_and_the_profiles_nf4_critic_fits(
    real_size, ws: Workspace
) -> None:
    profile = ws.profile("gpu-24gb")
    stage = profile.vibe_editor
    vibe = memory.footprint("vibe", real_size["vibe"].components, profile.dtype, stage.quantize, stage.offload)
    vlm = real_size["qwen-image-edit"].text_encoder  # Qwen2.5-VL-7B, the editor's text encoder and the critic
    bf16 = memory.footprint("vlm", {"model": vlm}, profile.dtype)
    nf4 = memory.footprint("vlm", {"model": vlm}, profile.dtype, ["model"] if profile.vlm.quantize else [])
    assert 7.5 < vibe.total_gib < 8.5 and 15.0 < bf16.total_gib < 16.0  # Sana 1.6B + Qwen3-VL-2B + DC-AE; 8.3 B
    before = memory.may_sit_together(vibe, bf16, profile.peak_budget_gib, profile.headroom_gib)
    assert not before.fits and before.weights_gib > profile.peak_budget_gib  # 23.5 GiB of weights alone
    after = memory.may_sit_together(vibe, nf4, profile.peak_budget_gib, profile.headroom_gib)
    assert after.fits and 5.0 < nf4.total_gib < 6.5 and after.weights_gib + profile.headroom_gib <= 22
    # the qwen editor under model offload holds nothing between edits: the critic sits beside it at its largest part
    qwen = profile.editor
    editor = memory.footprint(
        "qwen", real_size["qwen-image-edit"].components, profile.dtype, qwen.quantize, qwen.offload
    )
    assert editor.idle_gib == 0 and memory.may_sit_together(editor, nf4, 22, profile.headroom_gib).fits


def _profile_with_budget(ws: Workspace, name: str, budget: float) -> str:
    text = (ws.configs_dir / "profiles" / "cpu-tiny.yaml").read_text().replace("name: cpu-tiny", f"name: {name}")
    (ws.configs_dir / "profiles" / f"{name}.yaml").write_text(
        text.replace("dtype: float32", f"dtype: float32\npeak_budget_gib: {budget}\nheadroom_gib: 0")
    )
    return name


@pytest.mark.tiny
def test_the_runtime_releases_what_does_not_fit_beside_the_vlm(ws: Workspace, faces: Path) -> None:
    try:
        vibe = runtime.model_manager(ws, "cpu-tiny").get("vibe")
        with_room = runtime.vlm(ws, "cpu-tiny", "editor")
        assert runtime.model_manager(ws, "cpu-tiny").current is vibe  # no budget on the CPU profile: both stay
        need = memory.together_gib(vibe.footprint(), memory.footprint("vlm", {"model": with_room.model}, "float32"))
        runtime.release_models()

        tight = _profile_with_budget(ws, "cpu-tight", round(need * 0.9, 9))  # one of them fits, both do not
        manager = runtime.model_manager(ws, tight)
        manager.get("vibe")
        critic = runtime.vlm(ws, tight, "editor")
        assert manager.current is None  # the pipeline went first
        assert critic.p_yes(Image.open(faces / "obama" / "obama_1.jpg"), "Is this a photo?") > 0
        manager.get("vibe")  # and the VLM goes before the pipeline comes back: they take turns
        assert not [k for k in runtime._CRITICS if k[1] == tight]

        roomy = _profile_with_budget(ws, "cpu-roomy", round(need * 1.1, 9))
        manager = runtime.model_manager(ws, roomy)
        loaded = manager.get("vibe")
        runtime.vlm(ws, roomy, "editor")
        manager.get("vibe")
        assert manager.current is loaded and [k for k in runtime._CRITICS if k[1] == roomy]
    finally:
        runtime.release_models()


@pytest.mark.tiny
def test_each_load_of_the_vlm_is_recorded_with_its_precision(tiny_models, faces: Path, ws: Workspace) -> None:
    """The same weights in nf4 and in full precision answer differently, so their records differ; so do the
    editor's text encoder as the editor holds it and the edits it makes."""
    from flenwheel.models.critic import Critic

    snapshot = tiny_models["qwen-image-edit"]
    image = Image.open(faces / "obama" / "obama_1.jpg").convert("RGB")
    full = Critic.from_pretrained(snapshot)
    nf4 = Critic.from_pretrained(snapshot, quantize=True)
    assert full.source == f"{snapshot / 'text_encoder'}#fp32" and nf4.source == f"{snapshot / 'text_encoder'}#fp32,nf4"
    assert type(nf4.model.model.visual.blocks[0].attn.qkv).__name__ == "Linear4bit"  # the vision tower too
    question = "Is there exactly one person in the image?"
    assert full.p_yes(image, question) != nf4.p_yes(image, question)
    try:
        loaded = runtime.model_manager(ws, "cpu-tiny").get("qwen-image-edit")  # what edits record (test_enrich)
        assert loaded.ref == f"{loaded.model.ref}#fp32"
        gpu = loaded.stage.model_copy(update={"quantize": ["transformer", "text_encoder"], "offload": "model"})
        assert replace(loaded, stage=gpu, dtype="bfloat16").ref.endswith(
            "#bf16,nf4:text_encoder+transformer,offload:model"
        )
        shared = runtime.vlm(ws, "cpu-tiny", "editor")
        assert shared.model is loaded.pipe.text_encoder and shared.source.endswith("text_encoder#fp32")
    finally:
        runtime.release_models()


def test_precision_tags_name_dtype_quantised_parts_and_offload() -> None:
    assert memory.precision_tag("bfloat16") == "bf16"
    assert memory.precision_tag("bfloat16", ["model"], whole=True) == "bf16,nf4"
    tag = memory.precision_tag("bfloat16", ["transformer", "text_encoder"], "model")
    assert tag == "bf16,nf4:text_encoder+transformer,offload:model"
    assert memory.with_precision("Qwen/Qwen-Image-Edit-2509@abc", tag) == f"Qwen/Qwen-Image-Edit-2509@abc#{tag}"
    assert json.dumps(tag)  # plain text for the catalog

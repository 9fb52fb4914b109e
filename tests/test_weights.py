"""Strict loading (flenwheel.models.weights): a checkpoint whose tensors do not fit its classes is refused at load time
with one line naming the checkpoint, the component and the first keys; the undamaged twins load.

diffusers 0.42.1 only warns about missing keys (the parameters stay on the meta device, or uninitialised) and
transformers 5.23 initialises them at random: without the check every damaged folder below would load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flenwheel.models.loading import load_pipeline
from flenwheel.models.refs import ModelError
from flenwheel.models.vibe.pipeline import VibePipeline
from flenwheel.models.weights import CheckpointMismatch, check_component, check_pipeline, key_report
from flenwheel.store.workspace import Workspace
from flenwheel.training import QwenEditBackend

pytestmark = pytest.mark.tiny


def damage(file: Path, drop: str = "", rename: tuple[str, str] | None = None) -> None:
    """Rewrite a safetensors file without the tensors whose names start with ``drop`` / with one prefix renamed."""
    tensors = load_file(str(file))
    if drop:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(drop)}
    if rename:
        tensors = {(rename[1] + k[len(rename[0]) :] if k.startswith(rename[0]) else k): v for k, v in tensors.items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.fixture
def twins(tiny_models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Private copies of the tiny twins, to damage."""
    return {kind: Path(shutil.copytree(path, tmp_path / kind)) for kind, path in tiny_models.items()}


def test_the_undamaged_twins_pass_and_load(twins: dict[str, Path]) -> None:
    for path in twins.values():
        check_pipeline(path)  # legacy Qwen2.5-VL key layout, tied T5 embeddings, CLIP's base-model prefix: all fit
    pipe = VibePipeline.from_pretrained(twins["vibe"], dtype=torch.float32)
    assert not any(p.is_meta for p in pipe.transformer.parameters())


def test_a_vibe_checkpoint_of_another_layout_fails_at_load_with_one_line(twins: dict[str, Path]) -> None:
    folder = twins["vibe"]
    damage(
        folder / "transformer" / "diffusion_pytorch_model.safetensors",
        drop="edit_head.attn_blocks.0.mlp.",
        rename=("meta_queries", "meta_tokens"),
    )
    with pytest.raises(CheckpointMismatch) as err:
        VibePipeline.from_pretrained(folder, dtype=torch.float32)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {folder}: component transformer (VibeSanaTransformer) does not match")
    first = "edit_head.attn_blocks.0.mlp.fc1.bias, edit_head.attn_blocks.0.mlp.fc1.weight"
    assert f"7 weight(s) missing: {first}, " in message
    assert "(7 in all); 1 unexpected: meta_tokens;" in message  # 6 of the MLP, and meta_queries renamed


def test_load_pipeline_names_a_damaged_transformers_component(
    twins: dict[str, Path], ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The qwen editor's text encoder (saved in Qwen2.5-VL's legacy layout) loses a decoder layer: the error names
    the keys as the model names them, through transformers' own renaming."""
    folder = twins["qwen-image-edit"]
    damage(folder / "text_encoder" / "model.safetensors", drop="model.layers.1.")
    profile = ws.profile("cpu-tiny")
    expected = (
        r"component text_encoder \(Qwen2_5_VLForConditionalGeneration\) does not match its class, \d+ "
        r"weight\(s\) missing: model\.language_model\.layers\.1\."
    )
    with pytest.raises(ModelError, match=expected):
        load_pipeline("qwen-image-edit", profile.editor.model_copy(update={"model": str(folder)}), profile, ws)


def test_a_text_encoder_without_its_output_layer_still_loads(twins: dict[str, Path]) -> None:
    """Pipelines read their text encoders' hidden states: lm_head may be missing there (the critic checks for it),
    not elsewhere."""
    folder = twins["qwen-image-edit"]
    damage(folder / "text_encoder" / "model.safetensors", drop="lm_head.")
    check_pipeline(folder)
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(CheckpointMismatch, match=r"missing: lm_head\.weight"):
        check_component(Qwen2_5_VLForConditionalGeneration, folder / "text_encoder", folder, "text_encoder")


def test_tied_weights_need_one_end(twins: dict[str, Path]) -> None:
    """T5's encoder embeddings are tied to ``shared``: the checkpoint holds only the latter; without it both ends
    are missing."""
    from transformers import T5EncoderModel

    folder = twins["flux"] / "text_encoder_2"
    assert key_report(T5EncoderModel, folder).missing == []
    damage(folder / "model.safetensors", drop="shared.")
    assert key_report(T5EncoderModel, folder).missing == ["encoder.embed_tokens.weight", "shared.weight"]


def test_sharded_checkpoints_are_read_shard_by_shard(twins: dict[str, Path]) -> None:
    from diffusers import FluxTransformer2DModel

    folder = twins["flux"] / "transformer"
    model = FluxTransformer2DModel.from_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and key_report(FluxTransformer2DModel, folder).missing == []
    # the index still lists a key its shard no longer holds: diffusers would leave that weight on the meta device
    victim = next(k for k, v in sorted(index["weight_map"].items()) if v == shards[1])
    damage(folder / shards[1], drop=victim)
    with pytest.raises(CheckpointMismatch, match=f"1 weight\\(s\\) missing: {victim.replace('.', '[.]')};"):
        check_pipeline(twins["flux"])
    (folder / shards[2]).unlink()
    with pytest.raises(CheckpointMismatch, match=f"names the shard {shards[2]}"):
        check_pipeline(twins["flux"])


def test_the_trainer_checks_the_components_it_loads(twins: dict[str, Path], ws: Workspace) -> None:
    folder = twins["qwen-image-edit"]
    damage(folder / "vae" / "diffusion_pytorch_model.safetensors", drop="decoder.")
    profile = ws.profile("cpu-tiny")
    backend = QwenEditBackend(ws, profile, profile.edit_trainer, str(folder))
    with pytest.raises(CheckpointMismatch, match=r"component vae \(AutoencoderKLQwenImage\) .* missing: decoder\."):
        backend._vae_and_scheduler()
    with pytest.raises(CheckpointMismatch, match="component vae"):
        backend._pipeline_without_transformer()
    damage(folder / "transformer" / "diffusion_pytorch_model.safetensors", drop="transformer_blocks.1.")
    with pytest.raises(CheckpointMismatch, match=r"component transformer .* missing: transformer_blocks\.1\."):
        backend.load_transformer()


def _header_only(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file with these tensors' header (bf16) and no data: the check reads headers only."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


def test_the_real_qwen25_vl_hub_layout_passes_and_a_missing_key_fails(tmp_path: Path) -> None:
    """Real width: Qwen2.5-VL-7B's config (flenwheel.models.twins's real size) and its hub layout (``visual.``,
    ``model.layers.``, 5 shards and an index), as header-only files; 8.3 B parameters, built on the meta device."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from flenwheel.models.qwen_image_edit.twin import SIZES

    real = SIZES["real"]
    text = dict(real["qwen_vl_text"])
    section = text.pop("mrope_section")
    config = Qwen2_5_VLConfig(
        text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": section}},
        vision_config=real["qwen_vl_vision"],
    )
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) > 8e9
    hub = {
        k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): list(v.shape)
        for k, v in model.state_dict().items()
    }
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    config.save_pretrained(folder)
    names = sorted(hub)
    weight_map = {}
    for i in range(5):
        shard = f"model-{i + 1:05d}-of-00005.safetensors"
        part = names[i::5]
        _header_only(folder / shard, {k: hub[k] for k in part})
        weight_map |= dict.fromkeys(part, shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    check_component(Qwen2_5_VLForConditionalGeneration, folder, tmp_path, "text_encoder")

    # the first shard loses one tensor that the index still lists: named as the model names it
    first = names[0::5]
    victim = next(k for k in first if k.startswith("visual.blocks.7."))
    _header_only(folder / "model-00001-of-00005.safetensors", {k: hub[k] for k in first if k != victim})
    expected = "model." + victim
    with pytest.raises(CheckpointMismatch, match=f"1 weight\\(s\\) missing: {expected.replace('.', '[.]')};"):
        check_component(Qwen2_5_VLForConditionalGeneration, folder, tmp_path, "text_encoder")


def test_the_critic_refuses_a_damaged_vlm_before_transformers_makes_weights_up(twins: dict[str, Path]) -> None:
    from flenwheel.models.critic import Critic

    snapshot = twins["qwen-image-edit"]
    Critic.from_pretrained(snapshot)  # the undamaged encoder answers
    damage(snapshot / "text_encoder" / "model.safetensors", drop="model.layers.1.mlp.")
    with pytest.raises(CheckpointMismatch, match=r"component critic VLM \(Qwen2_5_VLForConditionalGeneration\)"):
        Critic.from_pretrained(snapshot)

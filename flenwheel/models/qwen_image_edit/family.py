"""Qwen-Image-Edit-2509 and -2511 as data (flenwheel.models.families): one family, two models.

2511 is the same ``QwenImageEditPlusPipeline`` with the same components and shapes (its card lists reduced image
drift and better character consistency), so it is another *model* of this family, not a family of its own: the
twin, the trainer backend, the LoRA targets and the ComfyUI key map are the same code, and a profile picks 2511 by
its hub id. What differs per model (licence, download size, its Lightning and multiple-angles LoRAs) is per card
or per entry of configs/loras.yaml.
"""

from flenwheel.models.families import APACHE_2, GB, Family, Licence, ModelCard

_SIZE = int(57.7 * GB)
_SIZE_SOURCE = (
    "bf16 components: transformer 20.43 B params 40.86 GB, Qwen2.5-VL-7B text encoder 8.29 B 16.58 GB, VAE 0.13 B "
    "0.25 GB"
)

# musubi-tuner's default: every Linear of the transformer blocks except the modulation
TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip

FAMILY = Family(
    name="qwen-image-edit",
    description="Qwen-Image-Edit (2509, 2511): instruction editing; the editor LoRA's base (flywheel 2)",
    pipeline_class="QwenImageEditPlusPipeline",
    components=("transformer", "vae", "text_encoder"),
    nf4_components=("transformer", "text_encoder"),
    serves=("editor",),
    twin="flenwheel.models.qwen_image_edit.twin:make_qwen_image_edit",
    trainer_backend="flenwheel.training.qwen_edit:QwenEditBackend",
    lora_kind="qwen_edit",
    lora_targets=TARGETS,
    key_map="flenwheel.training.lora_formats:qwen_to_comfy",
    models=(
        ModelCard(
            "Qwen/Qwen-Image-Edit-2509",
            Licence(APACHE_2, True, "model card metadata license: apache-2.0"),
            _SIZE,
            _SIZE_SOURCE,
            role="editing and editor-LoRA training",
        ),
        ModelCard(
            "Qwen/Qwen-Image-Edit-2511",
            Licence(APACHE_2, True, "model card metadata license: apache-2.0 (as quoted in issue 26, notes/field.md)"),
            _SIZE,
            "as 2509: the same class and shapes (not counted from its own configs offline)",
            role="editing and editor-LoRA training (less image drift, better character consistency)",
        ),
    ),
)

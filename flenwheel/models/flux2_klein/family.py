"""FLUX.2 [klein] 4B as data (flenwheel.models.families): generator, reference-image editor and LoRA base.

BFL publishes the step-distilled ``FLUX.2-klein-4B`` for fast inference (4 steps, no CFG) and the undistilled
``FLUX.2-klein-base-4B`` for LoRA training; both are Apache-2.0 (the 9B variants are not: FLUX Non-Commercial).
One ``Flux2KleinPipeline`` class serves text-to-image and single/multi-reference editing.
"""

from flenwheel.models.families import APACHE_2, GB, Family, Licence, ModelCard

_LICENCE = Licence(
    APACHE_2,
    True,
    "model card metadata license: apache-2.0 (BFL: klein 4B Apache-2.0, klein 9B FLUX Non-Commercial; issue 26, "
    "notes/field.md)",
)
_SIZE_SOURCE = (
    "bf16 components, our count of the architecture on the meta device (flux2_klein/twin.py SIZES['real']: "
    "transformer 3.88 B params 7.75 GB, Qwen3-4B text encoder 4.02 B 8.04 GB, VAE 0.08 B 0.17 GB); the hub's file "
    "listing was not seen offline (the issue quotes about 13 GB)"
)

# attention of both streams and both feed-forwards of the double blocks, and the single blocks' fused qkv+mlp
# input, all of which ComfyUI's kohya names cover (training/lora_formats.py). The single blocks' output
# (``attn.to_out``) is left out: as a peft suffix it also names the double blocks' ``attn.to_out`` ModuleList,
# which peft cannot adapt; a profile may name it with its block (``single_transformer_blocks.0.attn.to_out``).
TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
    "ff_context.linear_out", "attn.to_qkv_mlp_proj",
)  # fmt: skip

FAMILY = Family(
    name="flux2-klein",
    description="FLUX.2 [klein] 4B: text-to-image and reference-image editing; LoRA on klein-base-4B",
    pipeline_class="Flux2KleinPipeline",
    components=("transformer", "vae", "text_encoder"),
    nf4_components=("transformer", "text_encoder"),
    serves=("generator", "ref_editor"),
    twin="flenwheel.models.flux2_klein.twin:make_flux2_klein",
    trainer_backend="flenwheel.training.flux2_klein:Flux2KleinBackend",
    lora_kind="flux2_klein",
    lora_targets=TARGETS,
    key_map="flenwheel.training.lora_formats:flux2_to_comfy",
    models=(
        ModelCard(
            "black-forest-labs/FLUX.2-klein-4B",
            _LICENCE,
            int(16.0 * GB),
            _SIZE_SOURCE,
            role="inference (step-distilled: 4 steps, guidance 1)",
        ),
        ModelCard(
            "black-forest-labs/FLUX.2-klein-base-4B",
            _LICENCE,
            int(16.0 * GB),
            _SIZE_SOURCE,
            role="LoRA training base (undistilled: 50 steps, CFG)",
        ),
    ),
    notes=(
        "SIZES['real'] (5 double + 20 single blocks, 24 heads x 128, 128 packed latent channels, Qwen3-4B text "
        "encoder read at layers 9/18/27 so joint_attention_dim 7680) comes from ports of the published configs "
        "(MLX, C and Swift re-implementations), not from the hub's own config.json: unconfirmed offline",
    ),
)

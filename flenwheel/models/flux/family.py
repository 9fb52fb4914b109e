"""FLUX.1-dev as data (flenwheel.models.families): the generator and character-LoRA base of the gpu-24gb profile."""

from flenwheel.models.families import GB, Family, Licence, ModelCard

# diffusers' train_dreambooth_lora_flux.py default: attention of both streams (the names also match the single
# blocks' q/k/v) and both feed-forwards of the double blocks
TARGETS = (
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
    "ff_context.net.2",
)  # fmt: skip

FAMILY = Family(
    name="flux",
    description="FLUX.1-dev: text-to-image, guidance-distilled; the character LoRA's base",
    pipeline_class="FluxPipeline",
    components=("transformer", "vae", "text_encoder", "text_encoder_2"),
    nf4_components=("transformer", "text_encoder_2"),
    serves=("generator",),
    twin="flenwheel.models.flux.twin:make_flux",
    trainer_backend="flenwheel.training.flux:FluxBackend",
    lora_kind="flux",
    lora_targets=TARGETS,
    key_map="flenwheel.training.lora_formats:flux_to_comfy",
    models=(
        ModelCard(
            "black-forest-labs/FLUX.1-dev",
            Licence(
                "FLUX.1 [dev] Non-Commercial License",
                False,
                "model card: license other, license_name flux-1-dev-non-commercial-license (outputs may be used "
                "commercially, the weights not)",
            ),
            int(33.7 * GB),
            "bf16 components: transformer 11.90 B params 23.80 GB, T5-XXL 4.76 B 9.52 GB, CLIP-L 0.25 GB, VAE 0.17 GB",
            gated=True,
            role="generation and LoRA training",
        ),
    ),
)

"""VIBE as data (flenwheel.models.families): the compact editor (Sana1.5-1.6B + Qwen3-VL-2B), pipeline of ours."""

from flenwheel.models.families import APACHE_2, GB, Family, Licence, ModelCard

FAMILY = Family(
    name="vibe",
    description="VIBE: compact instruction editor (Sana1.5 + Qwen3-VL); no trainer",
    pipeline_class="flenwheel.models.vibe.pipeline:VibePipeline",
    components=("transformer", "vae", "text_encoder"),
    nf4_components=(),
    serves=("vibe_editor",),
    twin="flenwheel.models.vibe.twin:make_vibe",
    models=(
        ModelCard(
            "iitolstykh/VIBE-Image-Edit",
            Licence(APACHE_2, True, "model card metadata license: apache-2.0 (notes/real-world.md)"),
            int(9.7 * GB),
            "SD.Next's model catalogue lists 9.72 GB; our count of its configs is 4.32 B params, 8.65 GB in bf16 "
            "(docs/editing.md: the gap is unexplained, the larger figure is taken)",
            role="editing",
        ),
    ),
)

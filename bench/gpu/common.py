"""The stages of the GPU bench, what each one builds, and the constants the others share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "build" / "gpu-bench"  # /build/ is git-ignored, and a lent machine keeps it between calls


def _families() -> dict:
    from flenwheel.models.families import families  # no torch: the family tables are plain data

    return families()


# Per model family (flenwheel/models/<family>/family.py): its pipeline class, its model components, and whether the
# 24 GB profiles load its transformer in nf4 (FLUX.1, Qwen-Image-Edit; klein-4B's 7.8 GB transformer and VIBE run
# in bf16, so their built transformers stay bf16 and a QLoRA trainer quantises at load).
PIPELINES = {name: f.pipeline_class.rpartition(":")[2] for name, f in _families().items()}
MODEL_PARTS = {name: f.components for name, f in _families().items()}
QUANTISED = {name for name, f in _families().items() if "transformer" in f.nf4_components and name != "flux2-klein"}
# GPU memory "GB" are GiB, as on the cards: a "24 GB" RTX 4090 has 24564 MiB; the seed's editor limit is "20 GB"
CARD_GIB = 24564 / 1024
EDITOR_LIMIT_GIB = 20.0
PROMPT_TOKENS_QWEN = 256  # cached Qwen prompt: ~196 vision tokens of the 384² condition + the instruction


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str | None  # the model family whose components it loads
    parts: tuple[str, ...]  # components it builds ("base": model_index.json, scheduler, tokenizers, processor)
    measures: str
    also: tuple[tuple[str, tuple[str, ...]], ...] = ()  # components of other pipelines it loads too
    profile: str = "gpu-24gb"  # the profile whose settings it measures (its -open twin's tiny settings on the CPU)

    @property
    def needs(self) -> dict[str, tuple[str, ...]]:
        """Pipeline kind -> the components this stage builds and loads."""
        out = dict(self.also)
        if self.kind:
            out[self.kind] = tuple(dict.fromkeys([*out.get(self.kind, ()), *self.parts]))
        return out


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("identity", None, (), "insightface-layout ONNX models (SCRFD-shaped detector, ArcFace R50) through "
          "InsightFaceBackend: s/image and memory"),
    Stage("flux-infer", "flux", ("base", "transformer", "vae", "text_encoder", "text_encoder_2"),
          "FLUX.1-dev as load_pipeline loads it (nf4 transformer + T5, offload, tiling) with a character LoRA: "
          "one 1024² image"),
    Stage("flux-train", "flux", ("base", "transformer", "vae"),
          "FLUX QLoRA steps at each profile bucket and 1024, then a checkpoint sample"),
    Stage("qwen-encode", "qwen-image-edit", ("base", "vae", "text_encoder"),
          "the edit trainer's caching stage: bf16 Qwen2.5-VL + VAE encode triplets and sample prompts"),
    Stage("qwen-infer", "qwen-image-edit", ("base", "transformer", "vae", "text_encoder"),
          "the editor with its full stack (Lightning + multiple-angles + character LoRA), one 1024² edit; then the "
          "40-step CFG edit of the other categories"),
    Stage("qwen-train", "qwen-image-edit", ("base", "transformer", "vae"),
          "edit LoRA steps: target at the profile bucket (and 1024), condition at the pipeline's ~1 MP"),
    Stage("qwen-sample", "qwen-image-edit", ("base", "transformer", "vae"),
          "a checkpoint sample with the training state resident (condition at the pipeline's size)"),
    Stage("klein-infer", "flux2-klein", ("base", "transformer", "vae", "text_encoder"),
          "FLUX.2 [klein] 4B as gpu-24gb-open loads it (bf16 transformer, nf4 Qwen3 text encoder, offload, tiling) "
          "with a character LoRA: one 1024² image at the distilled model's 4 steps", profile="gpu-24gb-open"),
    Stage("klein-train", "flux2-klein", ("base", "transformer", "vae"),
          "klein-base-4B QLoRA steps (nf4 at load, 8-bit AdamW, checkpointing) at each profile bucket, then a "
          "checkpoint sample", profile="gpu-24gb-open"),
    Stage("qwen2511-infer", "qwen-image-edit", ("base", "transformer", "vae", "text_encoder"),
          "Qwen-Image-Edit-2511 (the 2509 class and shapes) with gpu-24gb-open's angles stack: Lightning 4-step + "
          "character LoRA, one 1024² edit", profile="gpu-24gb-open"),
    Stage("vibe-infer", "vibe", ("base", "transformer", "vae", "text_encoder"),
          "the vibe editor as the gpu-24gb profile loads it (bf16, no quantisation): one 1024² and one 2048² edit "
          "at the profile's steps and guidance"),
    Stage("vibe-critic", "vibe", ("base", "transformer", "vae", "text_encoder"),
          "the vibe editor resident, one 1024² edit; then the critic (Qwen2.5-VL-7B as the profile's vlm rule loads "
          "it: nf4) beside it, the edit's yes/no checks with both on the GPU",
          also=(("qwen-image-edit", ("base", "text_encoder")),)),
)}  # fmt: skip

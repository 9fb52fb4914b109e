"""The stages of the GPU bench, what each one builds, and the constants the others share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "build" / "gpu-bench"  # /build/ is git-ignored, and a lent machine keeps it between calls
PIPELINES = {"qwen-image-edit": "QwenImageEditPlusPipeline", "flux": "FluxPipeline", "vibe": "VibePipeline"}
MODEL_PARTS = {
    "qwen-image-edit": ("transformer", "vae", "text_encoder"),
    "flux": ("transformer", "vae", "text_encoder", "text_encoder_2"),
    "vibe": ("transformer", "vae", "text_encoder"),
}
QUANTISED = {"qwen-image-edit", "flux"}  # gpu-24gb loads these transformers in nf4; VIBE runs in bf16
# GPU memory "GB" are GiB, as on the cards: a "24 GB" RTX 4090 has 24564 MiB; the seed's editor limit is "20 GB"
CARD_GIB = 24564 / 1024
EDITOR_LIMIT_GIB = 20.0
PROMPT_TOKENS_QWEN = 256  # cached Qwen prompt: ~196 vision tokens of the 384² condition + the instruction


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str | None  # the pipeline whose components it loads
    parts: tuple[str, ...]  # components it builds ("base": model_index.json, scheduler, tokenizers, processor)
    measures: str
    also: tuple[tuple[str, tuple[str, ...]], ...] = ()  # components of other pipelines it loads too

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
    Stage("vibe-infer", "vibe", ("base", "transformer", "vae", "text_encoder"),
          "the vibe editor as the gpu-24gb profile loads it (bf16, no quantisation): one 1024² and one 2048² edit "
          "at the profile's steps and guidance"),
    Stage("vibe-critic", "vibe", ("base", "transformer", "vae", "text_encoder"),
          "the vibe editor resident, one 1024² edit; then the critic (Qwen2.5-VL-7B as the profile's vlm rule loads "
          "it: nf4) beside it, the edit's yes/no checks with both on the GPU",
          also=(("qwen-image-edit", ("base", "text_encoder")),)),
)}  # fmt: skip

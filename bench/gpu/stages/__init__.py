"""One module per model family; ``MEASURES`` maps each stage of :data:`bench.gpu.common.STAGES` to its function."""

from __future__ import annotations

from collections.abc import Callable

from bench.gpu.context import Ctx
from bench.gpu.stages.flux import measure_flux_infer, measure_flux_train
from bench.gpu.stages.identity import measure_identity
from bench.gpu.stages.klein import measure_klein_infer, measure_klein_train
from bench.gpu.stages.qwen import measure_qwen_encode, measure_qwen_infer, measure_qwen_train
from bench.gpu.stages.vibe import measure_vibe_critic, measure_vibe_infer

MEASURES: dict[str, Callable[[Ctx], None]] = {
    "identity": measure_identity,
    "flux-infer": measure_flux_infer,
    "flux-train": measure_flux_train,
    "qwen-encode": measure_qwen_encode,
    "qwen-infer": measure_qwen_infer,
    "qwen-train": measure_qwen_train,
    "qwen-sample": lambda ctx: measure_qwen_train(ctx, sample=True),
    "klein-infer": measure_klein_infer,
    "klein-train": measure_klein_train,
    "qwen2511-infer": measure_qwen_infer,
    "vibe-infer": measure_vibe_infer,
    "vibe-critic": measure_vibe_critic,
}

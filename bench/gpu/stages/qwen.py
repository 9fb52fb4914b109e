"""Qwen-Image-Edit (2509 and 2511, one class and shape): the editor with its LoRA stacks, the edit trainer's caching,
steps and samples."""

from __future__ import annotations

import json
from typing import Any

from bench.gpu.build import write_lora
from bench.gpu.common import PROMPT_TOKENS_QWEN
from bench.gpu.context import Ctx, image, stage_settings, timed_call, train_steps, trainer_settings
from bench.gpu.meter import now, sync


def _editor_stacks(ctx: Ctx) -> tuple[list[Any], list[Any], str]:
    """The angles stack of the stage's profile's editor (gpu-24gb: Lightning + multiple-angles; gpu-24gb-open:
    2511's Lightning) plus a character editor LoRA, with LoRA files of the real module shapes standing for the hub
    files; and the character-only stack."""
    from flenwheel.core.config import LoraSpec
    from flenwheel.models.loras import StackEntry
    from flenwheel.training import QwenEditBackend

    library = ctx.ws.loras()
    uses = ctx.ws.profile(ctx.stage.profile).editor.loras.get("angles", [])
    s = QwenEditBackend.with_targets(ctx.profile.edit_trainer)
    shapes = {
        "lightning-4step": (64, None),
        "lightning-8step": (64, None),  # every Linear of the 60 blocks
        "lightning-2511-4step": (64, None),  # 2511's Lightning: the same layout as 2509's (not seen offline)
        "lightning-2511-8step": (64, None),
        "multiple-angles": (16, QwenEditBackend.default_targets),
    }
    angles, notes = [], []
    for i, use in enumerate(uses):
        rank, targets = shapes.get(use.name, (16, QwenEditBackend.default_targets))
        path, modules = write_lora("qwen-image-edit", ctx.size, ctx.work / f"{use.name}.safetensors", rank, targets, i)
        spec = library[use.name].model_copy(update={"ref": str(path), "weight_name": None, "revision": None})
        angles.append(StackEntry(use.name, spec, spec.scale if use.scale is None else use.scale))
        notes.append(f"{use.name} r{rank}×{modules}")
    path, modules = write_lora(
        "qwen-image-edit", ctx.size, ctx.work / "character.safetensors", s.rank, s.target_modules, 9
    )
    character = StackEntry("character", LoraSpec(ref=str(path), applies_to="qwen-image-edit"), 1.0)
    notes.append(f"character r{s.rank}×{modules}")
    return [*angles, character], [character], ", ".join(notes)


def measure_qwen_infer(ctx: Ctx) -> None:
    from flenwheel.models.loading import ModelManager
    from flenwheel.models.loras import Sampling

    full, own, notes = _editor_stacks(ctx)
    stage = ctx.profile.editor
    px = 1024 if ctx.real else 64
    source = image(px, 0)
    manager = ModelManager(ctx.ws, ctx.profile)
    runs = (
        (
            "qwen-infer-angles",
            full,
            "将镜头向左旋转45度 Rotate the camera 45 degrees to the left.",
            "editor, angles stack: Lightning + multiple-angles + character (the full stack)",
        ),
        (
            "qwen-infer-other",
            own,
            "Relight with soft even studio lighting; keep the person unchanged.",
            "editor, other categories: character LoRA only, the profile's steps and CFG",
        ),
    )
    if ctx.stage.name == "qwen2511-infer":  # 2511 with Lightning: the angles stack only
        runs = (
            ("qwen2511-infer-lightning", full, runs[0][2], "Qwen-Image-Edit-2511 editor, Lightning 4-step + character"),
        )
    for key, stack, prompt, what in runs:
        sampling = Sampling.for_stack(stage, stack)
        ctx.meter.start()
        t0 = now()
        loaded, _ = manager.stacked("qwen-image-edit", stack)
        load_s = now() - t0
        kwargs = {
            "image": [source],
            "prompt": prompt,
            "negative_prompt": sampling.negative_prompt,
            "true_cfg_scale": sampling.true_cfg_scale,
            "height": sampling.height,
            "width": sampling.width,
        }
        if key in ("qwen-infer-angles", "qwen2511-infer-lightning"):
            timed_call(loaded.pipe, num_inference_steps=1, **kwargs)  # warm-up
        # a distilled stack's few steps all run; 40 CFG steps would take minutes: a few are timed, the rest added
        run = sampling.steps if sampling.steps <= 8 else min(sampling.steps, ctx.steps + 2)
        s_step, wall = timed_call(loaded.pipe, num_inference_steps=run, **kwargs)
        s_image = wall + (sampling.steps - run) * (s_step or 0.0)
        passes = 2 if (sampling.true_cfg_scale or 1.0) > 1.0 else 1
        timing = "" if run == sampling.steps else f"; {run} of {sampling.steps} steps run, s/image adds the rest"
        ctx.emit(
            key,
            what,
            sampling.width or px,
            ctx.meter.stop(),
            s_step=s_step,
            s_image=s_image,
            load_s=load_s,
            steps=sampling.steps,
            settings=f"{stage_settings(stage)}, {sampling.steps} steps × {passes} pass(es) (true CFG "
            f"{sampling.true_cfg_scale}), LoRAs {notes if stack is full else notes.split(', ')[-1]}, "
            f"fused {'yes' if loaded.fused else 'no'}{timing}",
        )
    manager.release()


def qwen_vae_scale(ctx: Ctx) -> int:
    """Pixels per latent of the Qwen VAE (as QwenImageEditPlusPipeline computes it)."""
    return 2 ** len(json.loads((ctx.folder / "vae" / "config.json").read_text())["temperal_downsample"])


def _qwen_item(ctx: Ctx, transformer: Any, res: int) -> dict[str, Any]:
    """A cached edit example of the shapes the trainer caches: the target at its bucket, the condition at the
    pipeline's size (``calculate_dimensions(control_area, aspect)``), the prompt embedded with the condition."""
    import torch
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    cfg, s = transformer.config, ctx.profile.edit_trainer
    scale = qwen_vae_scale(ctx)
    cw, ch = calculate_dimensions(getattr(s, "control_area", 1024 * 1024), 1.0)
    g = torch.Generator().manual_seed(res)
    return {
        "latents": torch.randn(cfg.out_channels, res // scale, res // scale, generator=g),
        "control": torch.randn(cfg.out_channels, ch // scale, cw // scale, generator=g),
        "prompt_embeds": torch.randn(PROMPT_TOKENS_QWEN, cfg.joint_attention_dim, generator=g),
    }


def measure_qwen_train(ctx: Ctx, sample: bool = False) -> None:
    import torch

    from flenwheel.training import LoraTrainer, QwenEditBackend

    backend = QwenEditBackend(ctx.ws, ctx.profile, ctx.profile.edit_trainer, str(ctx.folder))
    trainer = LoraTrainer(ctx.ws, None, backend)
    s = backend.settings
    ctx.meter.start()
    t0 = now()
    transformer, params, _ = trainer.prepare_model(s)
    optimizer = trainer.optimizer(params)
    load_s = now() - t0
    transformer.train()
    resolutions = s.resolutions[:1] if sample else sorted({*s.resolutions, 1024 if ctx.real else 128})
    for i, res in enumerate(resolutions):
        if i:
            ctx.meter.start()
        item = _qwen_item(ctx, transformer, res)
        s_step = train_steps(trainer, transformer, params, optimizer, item, 1 if sample else ctx.steps)
        if sample:
            break  # the step only makes the optimizer state a checkpoint sample sits beside
        c, k = item["control"].shape, qwen_vae_scale(ctx)
        extra = "" if res in s.resolutions else " (a bucket the profile does not use)"
        what = f"edit LoRA training step, target {res}² + condition {c[2] * k}×{c[1] * k}{extra}"
        ctx.emit(
            f"qwen-train@{res}",
            what,
            res,
            ctx.meter.stop(),
            s_step=s_step,
            load_s=None if i else load_s,
            profile_bucket=res in s.resolutions,
            settings=f"{trainer_settings(s)}, {PROMPT_TOKENS_QWEN} prompt tokens, batch {s.batch_size}; "
            f"{'load included' if not i else 'model resident'}",
        )
    if not sample:
        return
    src = ctx.work / "source.png"
    image(1024 if ctx.real else 128, 5, src)
    cond = {
        "prompt_embeds": torch.randn(PROMPT_TOKENS_QWEN, transformer.config.joint_attention_dim),
        "source": str(src),
    }
    ctx.meter.start()
    transformer.eval()
    sync()
    t0 = now()
    with backend.autocast():  # as LoraTrainer.train samples
        backend.sample(transformer, [cond], [0])
    sync()
    ctx.emit(
        "qwen-sample",
        "edit-LoRA checkpoint sample, training state resident",
        s.sample_size,
        ctx.meter.stop(),
        s_image=now() - t0,
        load_s=load_s,
        settings=f"{s.sample_steps} steps, true CFG 1, output at sample_size {s.sample_size}, condition from a "
        f"{1024 if ctx.real else 128}² source at the pipeline's size; LoRA + {s.optimizer} optimizer "
        "state resident",
    )


def measure_qwen_encode(ctx: Ctx) -> None:
    from flenwheel.training import Example, QwenEditBackend

    class Timed(QwenEditBackend):
        """Records how long loading the encoders takes, to tell it from encoding."""

        loads: list[float]

        def _pipeline_without_transformer(self) -> Any:
            t0 = now()
            pipe = super()._pipeline_without_transformer()
            self.loads.append(now() - t0)
            return pipe

    px, n = (1024, 4) if ctx.real else (128, 2)
    src = ctx.work / "held-out.png"
    image(px, 99, src)
    backend = Timed(ctx.ws, ctx.profile, ctx.profile.edit_trainer, str(ctx.folder), sample_sources=[src])
    backend.loads = []
    s = backend.settings
    examples = []
    for i in range(n):
        before, after = ctx.work / f"before-{i}.png", ctx.work / f"after-{i}.png"
        image(px, 2 * i, before)
        image(px, 2 * i + 1, after)
        examples.append(
            Example(f"bench-{i}", (before, after), "将镜头向左旋转45度 Rotate the camera 45 degrees to the left.")
        )
    cache = ctx.work / "cache"
    cache.mkdir()
    for key, what, run, count in (
        (
            "qwen-encode",
            f"edit-trainer caching: {n} triplets (instruction + condition + target)",
            lambda: backend.cache(examples, cache),
            n,
        ),
        (
            "qwen-encode-samples",
            f"edit-trainer caching: {len(s.sample_prompts)} sample instructions",
            lambda: backend.cache_samples(list(s.sample_prompts), cache),
            len(s.sample_prompts),
        ),
    ):
        if not count:
            continue
        ctx.meter.start()
        sync()
        t0 = now()
        run()
        sync()
        load_s = backend.loads[-1]
        ctx.emit(
            key,
            what,
            px,
            ctx.meter.stop(),
            s_image=(now() - t0 - load_s) / count,
            load_s=load_s,
            count=count,
            settings=f"Qwen2.5-VL text encoder + VAE in {ctx.profile.dtype} (not quantised), VL sees the "
            "condition at ~384², VAE encodes it at the pipeline's ~1 MP and the target at its bucket "
            f"{s.resolutions}; s/image per item, the load not included",
        )

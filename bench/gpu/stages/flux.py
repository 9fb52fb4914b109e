"""FLUX.1-dev: generation with a character LoRA, QLoRA training steps and a checkpoint sample."""

from __future__ import annotations

from bench.gpu.build import write_lora
from bench.gpu.context import Ctx, stage_settings, timed_call, train_steps, trainer_settings
from bench.gpu.meter import now, sync


def measure_flux_infer(ctx: Ctx) -> None:
    from flenwheel.core.config import LoraSpec
    from flenwheel.models.loading import ModelManager
    from flenwheel.models.loras import Sampling, StackEntry
    from flenwheel.training import FluxBackend

    s = FluxBackend.with_targets(ctx.profile.trainer)
    lora, modules = write_lora("flux", ctx.size, ctx.work / "character.safetensors", s.rank, s.target_modules, 3)
    stack = [StackEntry("character", LoraSpec(ref=str(lora), applies_to="flux"), 1.0)]
    stage = ctx.profile.generator
    sampling = Sampling.for_stack(stage, stack)
    manager = ModelManager(ctx.ws, ctx.profile)
    ctx.meter.start()
    t0 = now()
    loaded, _ = manager.stacked("flux", stack)
    load_s = now() - t0
    kwargs = {
        "prompt": "photo of fw_person walking in a park, full body",
        "height": sampling.height,
        "width": sampling.width,
        "guidance_scale": sampling.guidance,
    }
    timed_call(loaded.pipe, num_inference_steps=2, **kwargs)  # warm-up
    s_step, s_image = timed_call(loaded.pipe, num_inference_steps=sampling.steps, **kwargs)
    ctx.emit(
        "flux-infer",
        "FLUX.1-dev generation with a character LoRA (adapter)",
        sampling.width,
        ctx.meter.stop(),
        s_step=s_step,
        s_image=s_image,
        load_s=load_s,
        settings=f"{stage_settings(stage)}, {sampling.steps} steps, guidance {sampling.guidance}, LoRA rank "
        f"{s.rank} on {modules} modules, fused {'yes' if loaded.fused else 'no'}",
    )
    manager.release()


def measure_flux_train(ctx: Ctx) -> None:
    import torch

    from flenwheel.training import FluxBackend, LoraTrainer

    backend = FluxBackend(ctx.ws, ctx.profile, ctx.profile.trainer, str(ctx.folder))
    trainer = LoraTrainer(ctx.ws, None, backend)  # no catalog: nothing is registered
    s = backend.settings
    ctx.meter.start()
    t0 = now()
    transformer, params, _ = trainer.prepare_model(s)
    optimizer = trainer.optimizer(params)
    load_s = now() - t0
    transformer.train()
    cfg, scale = transformer.config, backend.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    for i, res in enumerate(sorted({*s.resolutions, 1024 if ctx.real else 128})):
        if i:
            ctx.meter.start()
        item = {
            "latents": torch.randn(cfg.in_channels // 4, res // scale, res // scale, generator=g),
            "prompt_embeds": torch.randn(s.max_sequence_length, cfg.joint_attention_dim, generator=g),
            "pooled": torch.randn(cfg.pooled_projection_dim, generator=g),
        }
        s_step = train_steps(trainer, transformer, params, optimizer, item, ctx.steps)
        extra = "" if res in s.resolutions else " (a bucket the profile does not use)"
        ctx.emit(
            f"flux-train@{res}",
            f"FLUX LoRA training step, {res}² bucket{extra}",
            res,
            ctx.meter.stop(),
            s_step=s_step,
            load_s=None if i else load_s,
            profile_bucket=res in s.resolutions,
            settings=f"{trainer_settings(s)}, {s.max_sequence_length} T5 tokens, batch {s.batch_size}; "
            f"{'load included' if not i else 'model resident'}",
        )
    ctx.meter.start()
    cond = {
        "prompt_embeds": torch.randn(s.max_sequence_length, cfg.joint_attention_dim, generator=g),
        "pooled": torch.randn(cfg.pooled_projection_dim, generator=g),
    }
    transformer.eval()
    sync()
    t0 = now()
    with backend.autocast():
        backend.sample(transformer, [cond], [0])
    sync()
    ctx.emit(
        "flux-sample",
        "FLUX checkpoint sample (training state resident)",
        s.sample_size,
        ctx.meter.stop(),
        s_image=now() - t0,
        settings=f"{s.sample_steps} steps, guidance {s.sample_guidance}, VAE moved to the training device",
    )

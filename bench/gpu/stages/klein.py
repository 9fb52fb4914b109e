"""FLUX.2 [klein] 4B: generation with a character LoRA (klein-4B's 4 distilled steps) and klein-base-4B QLoRA
steps with a checkpoint sample, under gpu-24gb-open (cpu-tiny-open for the CPU smoke)."""

from __future__ import annotations

from bench.gpu.build import write_lora
from bench.gpu.context import Ctx, stage_settings, timed_call, train_steps, trainer_settings
from bench.gpu.meter import now, sync

KIND = "flux2-klein"


def measure_klein_infer(ctx: Ctx) -> None:
    from flenwheel.core.config import LoraSpec
    from flenwheel.models.loading import ModelManager
    from flenwheel.models.loras import Sampling, StackEntry
    from flenwheel.training import Flux2KleinBackend

    s = Flux2KleinBackend.with_targets(ctx.profile.trainer)
    lora, modules = write_lora(KIND, ctx.size, ctx.work / "character.safetensors", s.rank, s.target_modules, 5)
    stack = [StackEntry("character", LoraSpec(ref=str(lora), applies_to=KIND), 1.0)]
    stage = ctx.profile.generator
    sampling = Sampling.for_stack(stage, stack)
    px = sampling.width or (1024 if ctx.real else 64)
    manager = ModelManager(ctx.ws, ctx.profile)
    ctx.meter.start()
    t0 = now()
    loaded, _ = manager.stacked("generator", stack)
    load_s = now() - t0
    kwargs = {
        "prompt": "photo of fw_person walking in a park, full body",
        "height": px,
        "width": px,
        "guidance_scale": sampling.guidance,
    }
    timed_call(loaded.pipe, num_inference_steps=2, **kwargs)  # warm-up
    s_step, s_image = timed_call(loaded.pipe, num_inference_steps=sampling.steps, **kwargs)
    ctx.emit(
        "klein-infer",
        "FLUX.2 [klein] 4B generation with a character LoRA (adapter)",
        px,
        ctx.meter.stop(),
        s_step=s_step,
        s_image=s_image,
        load_s=load_s,
        settings=f"{stage_settings(stage)}, {sampling.steps} steps, guidance {sampling.guidance}, LoRA rank "
        f"{s.rank} on {modules} modules",
    )
    manager.release()


def measure_klein_train(ctx: Ctx) -> None:
    import torch

    from flenwheel.training import Flux2KleinBackend, LoraTrainer

    backend = Flux2KleinBackend(ctx.ws, ctx.profile, ctx.profile.trainer, str(ctx.folder))
    trainer = LoraTrainer(ctx.ws, None, backend)  # no catalog: nothing is registered
    s = backend.settings
    ctx.meter.start()
    t0 = now()
    transformer, params, _ = trainer.prepare_model(s)
    optimizer = trainer.optimizer(params)
    load_s = now() - t0
    transformer.train()
    cfg = transformer.config
    vae, _ = backend._vae_and_scheduler()
    scale = 2 ** (len(vae.config.block_out_channels) - 1) * 2  # the VAE's factor times the 2x2 patches
    g = torch.Generator().manual_seed(0)
    tokens = min(s.max_sequence_length, 512)
    for i, res in enumerate(sorted({*s.resolutions, 1024 if ctx.real else 128})):
        if i:
            ctx.meter.start()
        item = {
            "latents": torch.randn(cfg.in_channels, res // scale, res // scale, generator=g),
            "prompt_embeds": torch.randn(tokens, cfg.joint_attention_dim, generator=g),
        }
        s_step = train_steps(trainer, transformer, params, optimizer, item, ctx.steps)
        extra = "" if res in s.resolutions else " (a bucket the profile does not use)"
        ctx.emit(
            f"klein-train@{res}",
            f"klein-base-4B LoRA training step, {res}² bucket{extra}",
            res,
            ctx.meter.stop(),
            s_step=s_step,
            load_s=None if i else load_s,
            profile_bucket=res in s.resolutions,
            settings=f"{trainer_settings(s)}, {tokens} Qwen3 tokens, batch {s.batch_size}; "
            f"{'load included' if not i else 'model resident'}",
        )
    ctx.meter.start()
    cond = {
        "prompt_embeds": torch.randn(tokens, cfg.joint_attention_dim, generator=g),
        "negative_embeds": torch.randn(tokens, cfg.joint_attention_dim, generator=g),
    }
    transformer.eval()
    sync()
    t0 = now()
    with backend.autocast():
        backend.sample(transformer, [cond], [0])
    sync()
    ctx.emit(
        "klein-sample",
        "klein-base checkpoint sample (training state resident)",
        s.sample_size,
        ctx.meter.stop(),
        s_image=now() - t0,
        settings=f"{s.sample_steps} steps, CFG {s.sample_guidance}, VAE moved to the training device",
    )

"""VIBE: the editor at 1024² and 2048², and the critic loaded beside it under the profile's VLM rule."""

from __future__ import annotations

from bench.gpu.context import Ctx, image, stage_settings, timed_call
from bench.gpu.meter import now


def _vibe(ctx: Ctx) -> tuple[object, object, object, float]:
    """The vibe editor through the model manager as the enrichment loads it: (manager, loaded, sampling, load s)."""
    from flenwheel.editing.vibe import VibeSampling
    from flenwheel.models.loading import ModelManager

    sampling = VibeSampling.for_stage(ctx.profile.vibe_editor)
    manager = ModelManager(ctx.ws, ctx.profile)
    ctx.meter.start()
    t0 = now()
    loaded, _ = manager.stacked("vibe", [])
    return manager, loaded, sampling, now() - t0


def _edit_kwargs(sampling: object) -> dict:
    return {
        "prompt": "Relight with soft even studio lighting; keep the person unchanged.",
        "guidance_scale": sampling.guidance_scale,
        "image_guidance_scale": sampling.image_guidance_scale,
        "resolution_binning": sampling.resolution_binning,
        "revert_resize": sampling.revert_resize,
    }


def _edit_row(
    ctx: Ctx, key: str, px: int, sampling: object, s_step: float | None, wall: float, run: int, **fields: object
) -> None:
    s_image = wall + (sampling.steps - run) * (s_step or 0.0)
    passes = 3 if sampling.guidance_scale > 1 and sampling.image_guidance_scale >= 1 else 2
    timing = "" if run == sampling.steps else f"; {run} of {sampling.steps} steps run, s/image adds the rest"
    ctx.emit(
        key,
        f"vibe editor, one {px}² edit ({ctx.profile.dtype}, unquantised)",
        px,
        ctx.meter.stop(),
        s_step=s_step,
        s_image=s_image,
        steps=sampling.steps,
        settings=f"{stage_settings(ctx.profile.vibe_editor)}, {sampling.steps} steps × {passes} branch(es) "
        f"(guidance {sampling.guidance_scale}, image guidance {sampling.image_guidance_scale}){timing}",
        **fields,
    )


def measure_vibe_infer(ctx: Ctx) -> None:
    """The vibe editor through the model manager, as the enrichment runs it: a 1024² and a 2048² edit."""
    manager, loaded, sampling, load_s = _vibe(ctx)
    kwargs = _edit_kwargs(sampling)
    for i, px in enumerate((1024, 2048) if ctx.real else (64, 128)):
        if i:
            ctx.meter.start()  # the weights stay resident: this row's peak is the larger edit's
        source = image(px, i)
        if i == 0:
            timed_call(loaded.pipe, image=source, num_inference_steps=1, **kwargs)  # warm-up
        run = min(sampling.steps, ctx.steps + 2)
        s_step, wall = timed_call(loaded.pipe, image=source, num_inference_steps=run, **kwargs)
        _edit_row(ctx, f"vibe-infer-{px}", px, sampling, s_step, wall, run, load_s=load_s if i == 0 else None)
    manager.release()


def measure_vibe_critic(ctx: Ctx) -> None:
    """The critic beside the resident vibe editor: VIBE loaded and one edit (its own row), then the Qwen2.5-VL-7B
    critic loaded as the profile's ``vlm`` rule says (nf4 on gpu-24gb) while VIBE stays on the device, and the edit's
    yes/no checks answered; the second row's peak holds both models. The accounting's verdict
    (:func:`flenwheel.models.memory.may_sit_together`) is recorded beside the measured peak."""
    from flenwheel.core.config import VerifySettings
    from flenwheel.models.critic import DEFAULT_CHECKS, Critic
    from flenwheel.models.loading import torch_dtype
    from flenwheel.models.memory import footprint, may_sit_together

    manager, loaded, sampling, load_s = _vibe(ctx)
    kwargs = _edit_kwargs(sampling)
    px = 1024 if ctx.real else 64
    source = image(px, 0)
    timed_call(loaded.pipe, image=source, num_inference_steps=1, **kwargs)  # warm-up
    run = min(sampling.steps, ctx.steps + 2)
    s_step, wall = timed_call(loaded.pipe, image=source, num_inference_steps=run, **kwargs)
    _edit_row(ctx, f"vibe-critic-edit-{px}", px, sampling, s_step, wall, run, load_s=load_s)

    profile = ctx.profile
    ctx.meter.start()  # VIBE stays resident: this row's peak is both models'
    t0 = now()
    critic = Critic.from_pretrained(
        ctx.folders["qwen-image-edit"], device=profile.device, dtype=torch_dtype(profile), quantize=profile.vlm.quantize
    )
    critic_load_s = now() - t0
    vlm = footprint("critic", {"model": critic.model}, profile.dtype, ["model"] if profile.vlm.quantize else [])
    verdict = may_sit_together(loaded.footprint(), vlm, profile.peak_budget_gib, profile.headroom_gib)
    edited = loaded.pipe(image=source, num_inference_steps=1, **kwargs).images[0]
    checks = [*VerifySettings().critic_checks, *DEFAULT_CHECKS]
    critic.answer(edited, checks[:1])  # warm-up
    t0 = now()
    critic.answer(edited, checks)
    s_check = (now() - t0) / len(checks)
    ctx.emit(
        "vibe-critic",
        f"critic beside the resident vibe editor ({len(checks)} yes/no checks of a {px}² edit)",
        px,
        ctx.meter.stop(),
        s_image=s_check,
        load_s=critic_load_s,
        accounted_gib=verdict.weights_gib,
        settings=f"critic {critic.source.rpartition('#')[2]} ({vlm.total_gib:.1f} GiB of weights) + vibe "
        f"{loaded.footprint().total_gib:.1f} GiB; accounting: {verdict.reason}; s/image = s per "
        "check",
    )
    manager.release()

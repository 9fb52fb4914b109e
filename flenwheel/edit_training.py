"""Flywheel 2: a Qwen-Image-Edit-2509 LoRA trained on approved (before, instruction, after) triplets.

There is no official diffusers trainer for the edit model; this backend follows the recipe of musubi-tuner's
Qwen-Image-Edit training and of the pipeline itself, and plugs into :class:`flenwheel.training.LoraTrainer`
(checkpoints, resume, samples, identity-chosen checkpoint, both output formats are shared):

* the *after* image is the target: its VAE latents are noised with the flow-matching schedule;
* the *before* image is the condition: its clean latents are packed and concatenated after the noisy target
  along the sequence, ``img_shapes`` lists both, and only the target tokens enter the loss;
* the instruction is embedded by the Qwen2.5-VL encoder *given the condition image*, as the pipeline does;
* latents and embeddings are cached on disk per dataset and model; the VL encoder and VAE encoder are freed
  after caching, so training holds only the transformer (nf4 under the gpu-24gb profile).

Also here: the triplet export in musubi-tuner's JSONL layout and as folders, and the evaluation that edits
held-out source photos with the base model and with base + LoRA (same prompts and seeds) and compares identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.config import Character, Profile, TrainerSettings, Workspace
from flenwheel.training import (
    Example,
    LoraTrainer,
    ProgressFn,
    TrainingBackend,
    TrainingError,
    TrainJob,
    TrainResult,
    _free,
    _lora_pairs,
    atomic_dir,
    atomic_save_file,
    bucket_size,
    commit_dir,
    fit_to_bucket,
    identity_scorer,
)

CONDITION_AREA = 384 * 384  # what the pipeline shows the VL encoder (pipeline_qwenimage_edit_plus)


# --------------------------------------------------------------------------- triplets


@dataclass(frozen=True)
class Triplet:
    before_id: str
    before_path: str
    instruction: str
    after_id: str
    after_path: str
    prompt_id: str | None


def approved_triplets(catalog: Catalog, character: str, ops: Sequence[str] = ("edit",)) -> list[Triplet]:
    """Approved (before, instruction, after) triplets of ``character`` made by ``ops``, in a stable order."""
    rows = catalog.rows(
        """SELECT t.before_id, b.path AS before_path, t.instruction, t.after_id, a.path AS after_path, t.prompt_id
           FROM (SELECT DISTINCT before_id, instruction, after_id, prompt_id, character, op FROM triplets) t
           JOIN images b ON b.image_id = t.before_id JOIN images a ON a.image_id = t.after_id
           WHERE t.character = ? AND list_contains(?, t.op)
             AND NOT EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = t.after_id AND r.decision = 'rejected')
           ORDER BY t.after_id, t.before_id""",
        [character, list(ops)],
    )
    return [Triplet(**r) for r in rows]


def split_held_out(source_ids: Sequence[str], every: int = 5) -> tuple[list[str], list[str]]:
    """(training sources, held-out sources): every ``every``-th source by id is held out, at least one when there
    are two or more, so the evaluation edits photos the LoRA never saw."""
    ids = sorted(source_ids)
    if len(ids) < 2:
        return ids, []
    held = ids[::every] if len(ids) >= every else ids[:1]
    return [i for i in ids if i not in held], held


def export_triplets(ws: Workspace, triplets: Sequence[Triplet], name: str) -> Path:
    """Write triplets for other trainers under ``<root>/exports/<name>/``:

    * ``musubi.jsonl`` — musubi-tuner's layout: ``image_path`` (after), ``control_path_0`` (before), ``caption``;
    * ``images/<after>.png`` + ``images/<after>.txt`` and ``control/<after>.png`` (the before image under the
      after image's name, the pairing most folder-based edit trainers expect).

    Files are hard links to the store where possible. Idempotent: a complete export is left as it is.
    """
    out = ws.root / "exports" / name
    if (out / "musubi.jsonl").exists():
        return out
    tmp = atomic_dir(out)
    try:
        (tmp / "images").mkdir()
        (tmp / "control").mkdir()
        lines = []
        for t in triplets:
            after, before = tmp / "images" / f"{t.after_id}.png", tmp / "control" / f"{t.after_id}.png"
            _link(ws.root / t.after_path, after)
            _link(ws.root / t.before_path, before)
            (tmp / "images" / f"{t.after_id}.txt").write_text(t.instruction + "\n", encoding="utf-8")
            final_after, final_before = out / "images" / after.name, out / "control" / before.name
            lines.append(json.dumps({"image_path": str(final_after), "control_path_0": str(final_before),
                                     "caption": t.instruction}, ensure_ascii=False))  # fmt: skip
        (tmp / "musubi.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------- the backend


def _pad(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, D] prompt embeddings into [B, L, D] with a mask (prompts differ in length)."""
    longest = max(t.shape[0] for t in tensors)
    embeds = torch.zeros(len(tensors), longest, tensors[0].shape[1], dtype=tensors[0].dtype)
    mask = torch.zeros(len(tensors), longest, dtype=torch.long)
    for i, t in enumerate(tensors):
        embeds[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = 1
    return embeds, mask


class QwenEditBackend(TrainingBackend):
    """Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``) LoRA on (before, instruction, after) examples."""

    kind = "qwen_edit"
    pipeline_class = "QwenImageEditPlusPipeline"
    transformer_class = "QwenImageTransformer2DModel"
    vae_class = "AutoencoderKLQwenImage"

    def __init__(
        self, ws: Workspace, profile: Profile, settings: TrainerSettings, model_spec: str,
        sample_sources: Sequence[Path] = (),
    ) -> None:  # fmt: skip
        super().__init__(ws, profile, settings, model_spec)
        self.sample_sources = list(sample_sources)

    @property
    def pipeline_kind(self) -> str:
        return "qwen-image-edit"

    # ---- caching

    def _encode(self, pipe: Any, pairs: Sequence[tuple[Image.Image, Image.Image | None, str]]) -> list[dict]:
        """(condition image, target image or None, instruction) -> cached tensors, with the pipeline's encoders."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        out = []
        resolution = self.settings.resolutions[0]
        with torch.no_grad():
            for i, (condition, target, text) in enumerate(pairs):
                res = self.settings.resolutions[i % len(self.settings.resolutions)] if target else resolution
                ref = target or condition
                size = bucket_size(ref.width, ref.height, res if target else self.settings.sample_size)
                cw, ch = calculate_dimensions(CONDITION_AREA, condition.width / condition.height)
                vl_image = pipe.image_processor.resize(condition, ch, cw)
                embeds, mask = pipe.encode_prompt(prompt=[text], image=[vl_image], device=self.device)
                item: dict[str, torch.Tensor] = {"prompt_embeds": embeds[0].float().cpu()}
                if mask is not None:
                    item["prompt_embeds"] = item["prompt_embeds"][: int(mask[0].sum())]

                item["control"] = self._latents(pipe, condition, size)
                if target is not None:
                    item["latents"] = self._latents(pipe, target, size)
                out.append(item)
        return out

    def _latents(self, pipe: Any, img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        """Normalised VAE latents [C, h, w] of ``img`` fitted to the bucket ``size``."""
        pixels = pipe.image_processor.preprocess(fit_to_bucket(img, size)).unsqueeze(2)  # one video frame
        return pipe._encode_vae_image(pixels.to(self.device, self.dtype), None)[:, :, 0][0].float().cpu()

    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"{e.key}.safetensors" for e in examples]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if missing:
            pipe = self._pipeline_without_transformer()
            pipe.to(self.device)
            pairs = []
            for i in missing:
                before, after = (_rgb(p) for p in examples[i].images)
                pairs.append((before, after, examples[i].text))
            for i, item in zip(missing, self._encode(pipe, pairs), strict=True):
                atomic_save_file(item, files[i])
            del pipe  # the VL encoder leaves memory before training starts
            _free()
        return [load_file(str(f)) for f in files]

    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """One condition per (sample source, instruction); the source image rides along for the pipeline."""
        if not self.sample_sources:
            return []
        combos = [(src, p) for src in self.sample_sources for p in prompts]
        keys = [hashlib.sha256(f"{src.name}|{p}|{self.settings.sample_size}".encode()).hexdigest()[:16]
                for src, p in combos]  # fmt: skip
        files = [cache_dir / f"sample-{k}.safetensors" for k in keys]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        if todo:
            pipe = self._pipeline_without_transformer()
            pipe.to(self.device)
            encoded = self._encode(pipe, [(_rgb(combos[i][0]), None, combos[i][1]) for i in todo])
            for i, item in zip(todo, encoded, strict=True):
                atomic_save_file(item, files[i])
            del pipe
            _free()
        return [{**load_file(str(f)), "source": str(src)} for f, (src, _) in zip(files, combos, strict=True)]

    # ---- training

    def loss(
        self, transformer: torch.nn.Module, batch: list[dict[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        from diffusers import QwenImageEditPlusPipeline as P

        x0 = torch.stack([b["latents"] for b in batch]).to(self.device, self.dtype)
        control = torch.stack([b["control"] for b in batch]).to(self.device, self.dtype)
        n, c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(self.device, self.dtype)
        timesteps, sigmas = self.sample_timesteps(self._vae_and_scheduler()[1], n, gen)
        s = sigmas.view(n, 1, 1, 1).to(self.device, self.dtype)
        noisy = P._pack_latents((1.0 - s) * x0 + s * noise, n, c, h, w)
        packed_control = P._pack_latents(control, n, c, control.shape[2], control.shape[3])
        embeds, mask = _pad([b["prompt_embeds"] for b in batch])
        img_shapes = [[(1, h // 2, w // 2), (1, control.shape[2] // 2, control.shape[3] // 2)]] * n
        pred = transformer(
            hidden_states=torch.cat([noisy, packed_control], dim=1),
            timestep=(timesteps / 1000).to(self.device, self.dtype),
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            encoder_hidden_states_mask=mask.to(self.device),
            img_shapes=img_shapes,
            return_dict=False,
        )[0][:, : noisy.shape[1]]  # the target tokens only: the condition is given, not learned
        target = P._pack_latents(noise - x0, n, c, h, w)
        return torch.mean((pred.float() - target.float()) ** 2)

    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, Any]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        from diffusers import QwenImageEditPlusPipeline

        vae, scheduler = self._vae_and_scheduler()
        vae.to(self.device)
        pipe = QwenImageEditPlusPipeline(
            scheduler=type(scheduler).from_config(scheduler.config), vae=vae, text_encoder=None, tokenizer=None,
            processor=None, transformer=transformer,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        images = []
        with torch.no_grad():
            for cond in conds:
                source = _rgb(Path(cond["source"]))
                h, w = cond["control"].shape[1:]
                for seed in seeds:
                    out = pipe(
                        image=[source], prompt_embeds=cond["prompt_embeds"][None].to(self.device, self.dtype),
                        prompt_embeds_mask=torch.ones(1, cond["prompt_embeds"].shape[0], dtype=torch.long),
                        true_cfg_scale=1.0, height=h * pipe.vae_scale_factor, width=w * pipe.vae_scale_factor,
                        num_inference_steps=self.settings.sample_steps,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    )  # fmt: skip
                    images.append(out.images[0])
        vae.to("cpu")
        return images

    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """ComfyUI's Qwen-Image LoRA format: the diffusers module names under ``diffusion_model.``."""
        out: dict[str, torch.Tensor] = {}
        for module, (a, b) in _lora_pairs(diffusers_sd).items():
            out[f"diffusion_model.{module}.lora_down.weight"] = a.contiguous()
            out[f"diffusion_model.{module}.lora_up.weight"] = b.contiguous()
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
        return out


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------- entry point


def train_edit_lora(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    profile: Profile,
    run_id: str | None,
    steps: int | None = None,
    ops: Sequence[str] = ("edit",),
    resume: bool = True,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the character's editor LoRA on its approved triplets (held-out sources excluded)."""
    from flenwheel.models import check_device

    check_device(profile)
    settings = profile.edit_trainer if steps is None else profile.edit_trainer.model_copy(update={"steps": steps})
    sources = [r["image_id"] for r in catalog.source_images(character.name)]
    _, held_out = split_held_out(sources)
    triplets = [t for t in approved_triplets(catalog, character.name, ops) if t.before_id not in held_out]
    if not triplets:
        raise TrainingError(
            f"no approved triplets of {character.name} made by {', '.join(ops)} outside the held-out sources: "
            "enrich with the qwen editor and approve results first (or include --ops augment)"
        )
    digest = hashlib.sha256("".join(t.after_id + t.before_id for t in triplets).encode()).hexdigest()[:12]
    export_triplets(ws, triplets, f"{character.name}_triplets_{digest}")
    held_paths = [ws.root / r["path"] for r in catalog.source_images(character.name) if r["image_id"] in held_out]
    sample_sources = held_paths[:1] or [ws.root / triplets[0].before_path]
    backend = QwenEditBackend(ws, profile, settings, settings.model or profile.editor.model, sample_sources)
    examples = [Example(f"{t.before_id[:16]}-{t.after_id[:16]}", (ws.root / t.before_path, ws.root / t.after_path),
                        t.instruction) for t in triplets]  # fmt: skip
    job = TrainJob(
        character.name, f"{character.name}@triplets-{digest}", examples, settings, character.trigger,
        base_model_ref=backend.model.ref, extra={"held_out_sources": held_out, "ops": list(ops)},
    )  # fmt: skip
    trainer = LoraTrainer(ws, catalog, backend, run_id)
    return trainer.train(job, identity_scorer(ws, catalog, character), resume, on_progress, stop_after)


# --------------------------------------------------------------------------- evaluation


@dataclass
class EditEvaluation:
    lora_id: str
    held_out: bool  # False when the character had no held-out source and training sources were used
    rows: list[dict[str, Any]]  # one per (arm, source, prompt, seed)
    metrics: dict[str, dict[str, float]]  # arm -> metrics
    report: Path


def evaluate_edit_lora(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    lora_id: str,
    profile: Profile,
    run_id: str | None,
    prompt_ids: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
) -> EditEvaluation:
    """Edit held-out sources with the base editor and with base + LoRA (same prompts and seeds); compare identity.

    Outputs are evaluation artefacts, not candidates: they go to ``<root>/evals/<lora_id>/`` with a JSON record
    of every parameter, and both arms' pass rate and similarity go to ``metrics`` (scope ``edit_eval``).
    """
    from flenwheel.config import LoraSpec
    from flenwheel.editing import EditJob, QwenEditor
    from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
    from flenwheel.models import ModelManager, StackEntry
    from flenwheel.report import arm_stats, edit_eval_report

    rows = catalog.rows("SELECT * FROM loras WHERE lora_id = ?", [lora_id])
    if not rows or rows[0]["kind"] != "qwen_edit" or rows[0]["character"] != character.name:
        raise TrainingError(f"{lora_id!r} is not a Qwen-Image-Edit LoRA of {character.name} in the catalog")
    hyper = json.loads(rows[0]["hyperparams"] or "{}")
    held = set(hyper.get("held_out_sources") or [])
    sources = [r for r in catalog.source_images(character.name) if not held or r["image_id"] in held]
    library = ws.prompt_library(character)
    prompts = [library[p] for p in prompt_ids] if prompt_ids else list(library.values())
    refset = reference_set_for(ws, catalog, character)
    judge = judge_for(ws, character, refset)
    face = load_backend(refset.backend, ws.settings.identity)
    out_dir = ws.root / "evals" / lora_id
    out_dir.mkdir(parents=True, exist_ok=True)
    own = StackEntry(lora_id, LoraSpec(ref=f"catalog:{lora_id}", applies_to="qwen-image-edit"), 1.0)
    results: list[dict[str, Any]] = []
    with ModelManager(ws, profile, catalog, run_id) as manager:
        for arm, extra in (("base", []), ("lora", [own])):
            editor = QwenEditor(ws, manager, catalog, extra_loras=extra)
            for src in sources:
                image = _rgb(ws.root / src["path"])
                for prompt in prompts:
                    for seed in seeds:
                        result = editor.edit(image, EditJob(src["image_id"], prompt, seed), None)
                        name = f"{arm}-{src['image_id'][:12]}-{prompt.id}-{seed}.png"
                        result.image.save(out_dir / name)
                        score = judge_image(face, judge, np.asarray(result.image))
                        results.append({
                            "arm": arm, "source_id": src["image_id"], "prompt_id": prompt.id, "seed": seed,
                            "file": name, "verdict": score.verdict, "similarity": score.similarity,
                            "loras": result.loras, "steps": result.steps, "guidance": result.guidance,
                            "model_ref": result.model_ref,
                        })  # fmt: skip
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1, default=str))
    metrics = {arm: arm_stats(arm, [r for r in results if r["arm"] == arm]).as_metrics() for arm in ("base", "lora")}
    if run_id:
        for arm, values in metrics.items():
            catalog.add_metrics(run_id, "edit_eval", f"{lora_id}:{arm}", values)
    report = edit_eval_report(ws.root, character.name, lora_id, results, out_dir, bool(held))
    return EditEvaluation(lora_id, bool(held), results, metrics, report)

"""The generic LoRA loop on diffusers + peft, which picks its checkpoint by what its samples show, not by loss.

It does what every good trainer does — cached latents and embeddings, aspect-ratio buckets that never upscale,
gradient accumulation, atomic checkpoints every N steps (keep the last K and the best), resume with optimizer
and RNG state, a progress callback — and adds what none of them do: at each checkpoint it samples fixed
prompts and seeds, has a judge score the samples (:mod:`.judging`: the character LoRA by likeness, copies of
its training images and prompt adherence; the editor LoRA by identity), writes the scores to ``metrics``, and
finally exports the checkpoint :func:`~flenwheel.training.checkpoints.choose_checkpoint` picks, with the reason
in words. Model-specific work lives in a backend (:mod:`.backend`).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.core.config import TrainerSettings
from flenwheel.store.workspace import Workspace
from flenwheel.training.backend import TrainingBackend
from flenwheel.training.checkpoints import (
    CheckpointScore,
    TrainingError,
    checkpoints,
    choose_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    scores_from_disk,
)
from flenwheel.training.export import export, finished_result, recorded_alpha, register
from flenwheel.training.job import CheckpointJudge, ProgressFn, SampleSpec, TrainingInterrupted, TrainJob, TrainResult

# metrics of a checkpoint, besides its sample count, when measured (scope ``checkpoint``)
CHECKPOINT_METRICS = (
    "pass_rate", "mean_similarity", "good_rate", "copy_rate", "weak_rate", "mean_likeness", "adherence", "composite",
)  # fmt: skip


class LoraTrainer:
    """The loop shared by the FLUX and Qwen-Image-Edit trainers (see the module docstring)."""

    def __init__(
        self, ws: Workspace, catalog: Catalog | None, backend: TrainingBackend, run_id: str | None = None
    ) -> None:
        """``catalog`` may be None where nothing is recorded (benchmarks of a step)."""
        self.ws, self.catalog, self.backend, self.run_id = ws, catalog, backend, run_id

    def lora_id(self, job: TrainJob) -> str:
        version = (job.dataset_version or "adhoc").split("@")[-1]
        return f"{job.character}-{version}-{self.backend.kind}-{job.fingerprint(self.backend.kind)[:10]}"

    def train(
        self,
        job: TrainJob,
        judge: CheckpointJudge | None = None,
        resume: bool = True,
        on_progress: ProgressFn | None = None,
        stop_after: int | None = None,
    ) -> TrainResult:
        """Train (or resume, or return the finished LoRA of) ``job``.

        ``stop_after`` ends the run after that many steps as if the process had been killed there (used to
        show that a resumed run reaches the same weights).
        """
        s = self.backend.with_targets(job.settings)
        lora_id = self.lora_id(job)
        run_dir = self.ws.root / "loras" / lora_id
        done = finished_result(lora_id, run_dir)
        if done is not None:  # registering again is a no-op, and completes a run killed just before it
            register(self.ws, self.catalog, self.backend, self.run_id, job, done, recorded_alpha(run_dir, job))
            return done
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        if not job.examples:
            raise TrainingError("nothing to train on: the dataset version has no images")
        cache_id = f"{self.backend.model.ref}|{job.fingerprint(self.backend.kind)}|{self.backend.cache_format}"
        key = hashlib.sha256(cache_id.encode()).hexdigest()[:16]
        cache_dir = self.ws.root / "cache" / self.backend.kind / key
        data = self.backend.cache(job.examples, cache_dir)
        prompts, seeds = job.samples()
        specs = [SampleSpec(p, seed) for p in prompts for seed in seeds]  # the order backend.sample makes them in
        sample_conds = self.backend.cache_samples([p.text for p in prompts], cache_dir) if prompts else []

        transformer, params, alpha = self.prepare_model(s)
        optimizer = self.optimizer(params)
        gen = torch.Generator("cpu").manual_seed(s.seed)
        step, losses, resumed_from = 0, [], None
        found = checkpoints(run_dir)
        if resume and found:
            last = found[-1]
            state = torch.load(last / "state.pt", weights_only=False)
            set_peft_model_state_dict(transformer, load_file(str(last / "adapter.safetensors")))
            for p in params:
                p.data = p.data.float()
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            step, losses, resumed_from = state["step"], list(state["losses"]), state["step"]
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

        order = self._order([self.backend.batch_key(d) for d in data], s)
        scores = scores_from_disk(run_dir)
        for score in scores:  # a kill between a checkpoint and its catalog rows is completed here
            self._record(lora_id, score, losses, s.checkpoint_every)
        started, done_here = time.perf_counter(), 0
        transformer.train()
        while step < s.steps:
            accumulated = self.train_step(transformer, params, optimizer, data, order, gen, step)
            step += 1
            done_here += 1
            losses.append((step, accumulated))
            if on_progress:
                on_progress(step, s.steps, accumulated, (time.perf_counter() - started) / done_here)
            if step % s.checkpoint_every == 0 or step == s.steps:
                transformer.eval()
                with self.backend.autocast():
                    samples = self.backend.sample(transformer, sample_conds, seeds) if sample_conds else []
                transformer.train()
                score, labels = self._score(step, samples, specs, judge)
                scores = [*(x for x in scores if x.step != step), score]
                state = {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "generator": gen.get_state(),
                    "losses": losses,
                }
                save_checkpoint(run_dir, step, get_peft_model_state_dict(transformer), state, samples, labels, score)
                prune_checkpoints(run_dir, s.keep_last, choose_checkpoint(scores).step)
                self._record(lora_id, score, losses, s.checkpoint_every)
            if stop_after is not None and done_here >= stop_after:
                self.backend.release()
                raise TrainingInterrupted(step)
        del transformer, optimizer
        self.backend.release()
        best = choose_checkpoint(scores) if scores else CheckpointScore(s.steps, None, None, 0)
        return export(
            self.ws,
            self.catalog,
            self.backend,
            self.run_id,
            job,
            lora_id,
            run_dir,
            best.step,
            scores,
            losses,
            alpha,
            resumed_from,
        )

    def prepare_model(self, s: TrainerSettings) -> tuple[torch.nn.Module, list[torch.nn.Parameter], float]:
        """The frozen base with a fresh LoRA adapter; only the adapter's (fp32) parameters train."""
        torch.manual_seed(s.seed)  # the adapter's initialisation is part of what a seed reproduces
        return self.add_lora(self.backend.load_transformer(), s)

    def add_lora(
        self, transformer: torch.nn.Module, s: TrainerSettings
    ) -> tuple[torch.nn.Module, list[torch.nn.Parameter], float]:
        """A fresh LoRA adapter on the prepared base; its parameters are fp32 master weights (mixed precision)."""
        alpha = s.alpha or float(s.rank)
        targets = list(self.backend.with_targets(s).target_modules or [])
        transformer.add_adapter(
            LoraConfig(r=s.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
        )
        self.backend.check_targets(transformer)  # an export that would fail fails now, not after the run
        if s.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        params = [p for p in transformer.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        return transformer, params, alpha

    def train_step(
        self,
        transformer: torch.nn.Module,
        params: list[torch.nn.Parameter],
        optimizer: Any,
        data: list[dict[str, torch.Tensor]],
        order: Callable[[int], list[int]],
        gen: torch.Generator,
        step: int,
    ) -> float:
        """One optimizer step (with gradient accumulation); returns the step's loss."""
        s = self.backend.settings
        accumulated = 0.0
        for micro in range(s.grad_accum):
            batch_idx = order(step * s.grad_accum + micro)
            with self.backend.autocast():
                loss = self.backend.loss(transformer, [data[i] for i in batch_idx], gen) / s.grad_accum
            loss.backward()
            accumulated += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return accumulated

    def optimizer(self, params: list[torch.nn.Parameter]) -> Any:
        s = self.backend.settings
        if s.optimizer == "adamw8bit":
            if self.backend.device.type != "cuda":
                raise TrainingError("adamw8bit (bitsandbytes) needs a CUDA GPU; use optimizer: adamw on the CPU")
            import bitsandbytes as bnb  # GPU-only library: imported where it is used

            return bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=s.weight_decay)
        return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)

    @staticmethod
    def _order(keys: list[tuple], s: TrainerSettings) -> Callable[[int], list[int]]:
        """Batch ``k`` of the run: examples shuffled per epoch (seeded), grouped by their batch key (bucket)."""
        shapes: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            shapes.setdefault(key, []).append(i)
        cache: dict[int, list[list[int]]] = {}

        def epoch_batches(epoch: int) -> list[list[int]]:
            if epoch not in cache:
                rng = np.random.default_rng([s.seed, epoch])
                batches = []
                for members in shapes.values():
                    perm = [members[j] for j in rng.permutation(len(members))]
                    batches += [perm[k : k + s.batch_size] for k in range(0, len(perm), s.batch_size)]
                cache.clear()
                cache[epoch] = [batches[j] for j in rng.permutation(len(batches))]
            return cache[epoch]

        per_epoch = len(epoch_batches(0))

        def batch(k: int) -> list[int]:
            return epoch_batches(k // per_epoch)[k % per_epoch]

        return batch

    def _score(
        self, step: int, samples: Sequence[Image.Image], specs: Sequence[SampleSpec], judge: CheckpointJudge | None
    ) -> tuple[CheckpointScore, list[str]]:
        """The checkpoint's score and a label per sample (nothing measured without a judge or samples)."""
        if judge is None or not samples:
            return CheckpointScore(step, None, None, len(samples)), [f"sample {i}" for i in range(len(samples))]
        return judge(step, samples, specs)

    def _record(self, lora_id: str, score: CheckpointScore, losses: list[tuple[int, float]], every: int) -> None:
        """A committed checkpoint's scores and recent loss in ``metrics`` (once per checkpoint, whichever run
        records it: these are facts about the checkpoint)."""
        if not self.run_id:
            return
        values = {k: float(v) for k in CHECKPOINT_METRICS if (v := getattr(score, k)) is not None}
        if values:
            values["n_samples"] = float(score.n_samples)
            self.catalog.add_metrics(self.run_id, "checkpoint", lora_id, values, step=score.step, once=True)
        recent = [v for st, v in losses if score.step - every < st <= score.step]
        if recent:
            self.catalog.add_metrics(
                self.run_id, "lora_loss", lora_id, {"loss": float(np.mean(recent))}, step=score.step, once=True
            )

"""LoRA training on diffusers + peft, split along its seams.

:mod:`.data` (examples, buckets, exports), :mod:`.checkpoints` (atomic save, choose, prune), :mod:`.judging`
(what a checkpoint's samples say: the evaluation engine for the character LoRA, identity for the editor's),
:mod:`.lora_formats` (diffusers and ComfyUI/kohya keys), :mod:`.backend` (the model-specific interface) with
:mod:`.flux`, :mod:`.flux2_klein` and :mod:`.qwen_edit`, :mod:`.trainer` (the generic loop), :mod:`.export` (files
and the catalog row of the chosen checkpoint), :mod:`.triplets` and :mod:`.edit_eval` (flywheel 2's data and
evaluation).
"""

from flenwheel.training.checkpoints import CheckpointScore, TrainingError, checkpoint_reason, choose_checkpoint
from flenwheel.training.data import Example, bucket_size, export_version, fit_to_bucket
from flenwheel.training.edit_eval import EditEvaluation, evaluate_edit_lora
from flenwheel.training.flux import FluxBackend, train_flux
from flenwheel.training.flux2_klein import Flux2KleinBackend
from flenwheel.training.job import SamplePrompt, SampleSpec, TrainingInterrupted, TrainJob, TrainResult
from flenwheel.training.judging import evaluation_judge, evaluation_samples, identity_judge, identity_scorer
from flenwheel.training.lora_formats import comfy_to_flux, flux_to_comfy
from flenwheel.training.qwen_edit import QwenEditBackend, train_edit_lora
from flenwheel.training.trainer import LoraTrainer
from flenwheel.training.triplets import Triplet, approved_triplets, export_triplets, split_held_out

__all__ = [
    "CheckpointScore", "EditEvaluation", "Example", "Flux2KleinBackend", "FluxBackend", "LoraTrainer",
    "QwenEditBackend", "SamplePrompt", "SampleSpec", "TrainJob", "TrainResult", "TrainingError",
    "TrainingInterrupted", "Triplet", "approved_triplets", "bucket_size", "checkpoint_reason", "choose_checkpoint",
    "comfy_to_flux", "evaluate_edit_lora", "evaluation_judge", "evaluation_samples", "export_triplets",
    "export_version", "fit_to_bucket", "flux_to_comfy", "identity_judge", "identity_scorer", "split_held_out",
    "train_edit_lora", "train_flux",
]  # fmt: skip

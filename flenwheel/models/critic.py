"""VLM critic: yes/no questions about an edited image, answered from Qwen2.5-VL's next-token logits.

No text is generated for a check (the same model writes training captions with :meth:`Critic.describe`, see
:mod:`flenwheel.dataset.captions`). The image and ``"<question> Answer yes or no."`` go through Qwen2.5-VL's chat
format up to the start of the assistant's turn; one forward pass gives the logits of the first answer token, and

    p_yes = softmax over {yes tokens, no tokens} of those logits, summed over the yes tokens
          = sigmoid(logsumexp(logits[yes]) - logsumexp(logits[no]))

The yes tokens are the first tokens of ``"Yes"``, ``"yes"``, ``" Yes"``, ``" yes"`` (and likewise for no): a chat
model starts its answer with either case, with or without a leading space depending on the tokenizer, and in
Qwen2's vocabulary each of these words is one token. A first token that both a yes and a no variant start with
(a byte-level tokenizer without merges turns " yes" and " no" both into "Ġ"...) says nothing and is dropped.
Everything else in the vocabulary is ignored, so the result is a normalised yes-vs-no probability even when the
model would rather say something else.

**Weights.** Qwen-Image-Edit-2509's ``text_encoder/`` is a full ``Qwen2_5_VLForConditionalGeneration``
checkpoint, output layer included (docs/verification.md gives the evidence), so the editor's own snapshot can
serve as the critic: :func:`critic_source` checks the checkpoint for ``lm_head.weight`` (or tied embeddings) and
falls back to ``Qwen/Qwen2.5-VL-7B-Instruct`` when it is missing. The tokenizer and image processor come from the
snapshot's ``processor/`` folder. Loading goes through ``from_pretrained`` exactly as for a hub checkpoint; the
tiny Qwen-Image-Edit twin of :mod:`flenwheel.models.twins` is loaded the same way in tests.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from flenwheel.core.config import Check
from flenwheel.core.errors import FlenwheelError
from flenwheel.models import weights
from flenwheel.models.memory import Footprint, footprint, precision_tag, with_precision

__all__ = [
    "DEFAULT_CHECKS",
    "DEFAULT_HUB_ID",
    "Check",
    "Critic",
    "CriticAnswer",
    "CriticError",
    "CriticSource",
    "CriticWeightsMissing",
    "critic_source",
    "has_lm_head",
]

DEFAULT_HUB_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
ANSWER_SUFFIX = " Answer yes or no."
YES_WORDS = ("Yes", "yes", " Yes", " yes")
NO_WORDS = ("No", "no", " No", " no")
# Pixels the image is scaled down to at most (28x28 px make one visual token of Qwen2.5-VL): 512 tokens are
# plenty for a yes/no question about a photo, and keep the 7B model's pass well under a second on a GPU.
MAX_PIXELS = 512 * 28 * 28
# What Qwen2.5-VL's own chat template renders for one image and one question (default system prompt). Used
# when the processor carries no chat template (the tiny twin's processor/ folder has none).
QWEN_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EMBED_KEYS = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight")

# Generic checks for any enrichment output; prompt entries add their own (PromptEntry.checks).
DEFAULT_CHECKS: tuple[Check, ...] = (
    Check(id="one-person", question="Does this photo show exactly one person?"),
    Check(
        id="no-artifacts",
        question="Does this photo show obvious generation artifacts, such as a distorted face, melted features "
        "or garbled hands?",
        expect=False,
    ),
)


class CriticError(FlenwheelError, RuntimeError):
    """The critic cannot run as asked; the message says what to do."""


class CriticWeightsMissing(CriticError):
    """The critic's weights (or their output layer) are not where they were looked for."""


@dataclass(frozen=True)
class CriticSource:
    """Where the critic's weights and processor come from, and why."""

    model: str  # folder or hub id of a Qwen2_5_VLForConditionalGeneration checkpoint
    processor: str  # folder or hub id of its processor (tokenizer + image processor)
    reused: bool  # True when the editor's text encoder is reused
    reason: str


@dataclass(frozen=True)
class CriticAnswer:
    """The critic's answer to one check; ``passed`` is whether the answer is the one a good image gives."""

    check_id: str
    question: str
    p_yes: float
    expect: bool
    threshold: float
    passed: bool

    def row(self) -> tuple[str, str, float, bool]:
        """(check_id, question, p_yes, passed) for ``critic_answers(image_id, check_id, question, p_yes, passed)``."""
        return self.check_id, self.question, self.p_yes, self.passed

    def verification(self, image_id: str, model: str, run_id: str | None) -> dict[str, Any]:
        """The answer as a ``verifications`` row (``critic:<check id>``): p(yes) against the check's threshold."""
        return {
            "image_id": image_id,
            "name": f"critic:{self.check_id}",
            "score": self.p_yes,
            "threshold": self.threshold,
            "passed": self.passed,
            "mask_id": None,
            "run_id": run_id,
            "params": {"question": self.question, "expect": self.expect, "model": model},
        }


# --------------------------------------------------------------------------- weights


def _how_to_get(hub_id: str = DEFAULT_HUB_ID) -> str:
    return (
        f"on a machine with internet run `hf download {hub_id}` and copy the Hugging Face cache here, or point "
        "the critic at a Qwen-Image-Edit-2509 snapshot folder (its text_encoder/ is the same model)"
    )


def checkpoint_keys(folder: Path) -> set[str] | None:
    """Tensor names of the transformers checkpoint in ``folder`` (sharded index or single file); None if absent."""
    found = weights.checkpoint_keys(folder, weights.TRANSFORMERS_FILES)
    return None if found is None else found[0]


def _tied(config: dict[str, Any]) -> bool:
    text = config.get("text_config") or {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def has_lm_head(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` can produce next-token logits: ``lm_head.weight``, or tied embeddings."""
    keys = checkpoint_keys(folder)
    if keys is None:
        return False
    if "lm_head.weight" in keys:
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return _tied(config) and any(k in keys for k in EMBED_KEYS)


def _processor_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def critic_source(editor_snapshot_dir: Path | str, hub_id: str = DEFAULT_HUB_ID) -> CriticSource:
    """Reuse the editor's text encoder as the critic when it has its output layer, else the hub model.

    ``editor_snapshot_dir`` is a Qwen-Image-Edit(-2509) pipeline folder (model_index.json, text_encoder/,
    processor/, ...). The text encoder is reused when its checkpoint holds ``lm_head.weight`` (or its config ties
    the output layer to the embeddings); the processor comes from ``processor/`` when the snapshot has one.
    """
    snap = Path(editor_snapshot_dir).expanduser()
    encoder, proc = snap / "text_encoder", snap / "processor"
    processor = str(proc) if _processor_folder(proc) else hub_id
    if not (encoder / "config.json").is_file():
        return CriticSource(hub_id, hub_id, False, f"{snap} has no text_encoder/ checkpoint")
    try:
        config = json.loads((encoder / "config.json").read_text())
    except ValueError:
        return CriticSource(hub_id, hub_id, False, f"{encoder / 'config.json'} is not JSON")
    if "Qwen2_5_VLForConditionalGeneration" not in (config.get("architectures") or []):
        return CriticSource(hub_id, hub_id, False, f"{encoder} is not a Qwen2_5_VLForConditionalGeneration")
    try:
        keys = checkpoint_keys(encoder)
    except weights.CheckpointMismatch as e:
        return CriticSource(hub_id, hub_id, False, str(e))
    if keys is None:
        return CriticSource(hub_id, hub_id, False, f"{encoder} has no safetensors weights")
    if "lm_head.weight" in keys:
        return CriticSource(str(encoder), processor, True, "text_encoder holds lm_head.weight")
    if _tied(config) and any(k in keys for k in EMBED_KEYS):
        return CriticSource(str(encoder), processor, True, "text_encoder ties lm_head to its embeddings")
    return CriticSource(hub_id, hub_id, False, f"{encoder} has no lm_head.weight (saved as an encoder only)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _resolve(ref: str, processor: str | None) -> tuple[str, str, bool]:
    """(model, processor, local) for a snapshot folder, a text-encoder folder or a hub id."""
    path = Path(ref).expanduser()
    if path.exists():
        if (path / "model_index.json").is_file():
            src = critic_source(path)
            return src.model, processor or src.processor, Path(src.model).exists()
        if not (path / "config.json").is_file():
            raise CriticWeightsMissing(f"VLM weights (critic, captions): {path} has no config.json; {_how_to_get()}")
        if not has_lm_head(path):
            raise CriticWeightsMissing(
                f"VLM weights (critic, captions): {path} has no lm_head.weight (saved as an encoder only), so it "
                "cannot answer; "
                f"use {DEFAULT_HUB_ID}: {_how_to_get()}"
            )
        sibling = path.parent / "processor"
        default_proc = str(sibling) if _processor_folder(sibling) else (str(path) if _processor_folder(path) else "")
        return str(path), processor or default_proc or DEFAULT_HUB_ID, True
    if not HUB_ID.match(ref):
        raise CriticWeightsMissing(
            f"VLM weights (critic, captions): {ref!r} is neither an existing folder nor a hub id (org/name)"
        )
    return ref, processor or ref, False


def planned_footprint(ref: str | Path, dtype: str, quantize: bool) -> Footprint | None:
    """The weights :meth:`Critic.from_pretrained` would put on the device for ``ref``, from its config alone (built
    on the meta device); None when the config cannot be read here (loading then says what is missing)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    try:
        model_ref, _, local = _resolve(str(ref), None)
        config = AutoConfig.from_pretrained(model_ref, local_files_only=local or _offline())
    except (CriticError, OSError, ValueError):
        return None
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    return footprint("critic/caption VLM", {"model": model}, dtype, ["model"] if quantize else [])


# --------------------------------------------------------------------------- critic


def _first_ids(tokenizer: Any, words: Iterable[str]) -> set[int]:
    ids = set()
    for w in words:
        encoded = tokenizer.encode(w, add_special_tokens=False)
        if encoded:
            ids.add(int(encoded[0]))
    return ids


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of the first tokens of the yes and of the no variants, minus any both share (see the module docstring)."""
    yes, no = _first_ids(tokenizer, YES_WORDS), _first_ids(tokenizer, NO_WORDS)
    shared = yes & no
    yes, no = yes - shared, no - shared
    if not yes or not no:
        raise CriticError("the critic's tokenizer has no distinct first token for 'yes' and 'no'")
    return sorted(yes), sorted(no)


def _fit(image: Image.Image | np.ndarray, max_pixels: int) -> Image.Image:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    if img.width * img.height > max_pixels:
        scale = math.sqrt(max_pixels / (img.width * img.height))
        size = (max(28, int(img.width * scale)), max(28, int(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img


class Critic:
    """A Qwen2.5-VL model and its processor, answering yes/no checks about images (and describing them)."""

    def __init__(self, model: Any, processor: Any, max_pixels: int = MAX_PIXELS, source: str = "") -> None:
        self.model = model.eval()
        self.processor = processor
        self.max_pixels = max_pixels
        self.source = source  # what was loaded, for the catalog (model ref of the answers)
        self.yes_ids, self.no_ids = answer_token_ids(processor.tokenizer)

    @classmethod
    def from_pipeline(cls, pipe: Any, source: str, max_pixels: int = MAX_PIXELS) -> Critic:
        """The text encoder and processor of a loaded Qwen-Image-Edit pipeline as the critic: the weights already
        in memory (quantised and offloaded as the editor has them) answer, so checking costs no second copy of the
        7B model. The caller makes sure the checkpoint has its output layer (:func:`critic_source`) and gives the
        ``source`` with the precision the editor runs it in (``<ref>#bf16,nf4,offload:model``)."""
        return cls(pipe.text_encoder, pipe.processor, max_pixels=max_pixels, source=source)

    @classmethod
    def from_pretrained(
        cls,
        ref: str | Path,
        processor: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        quantize: bool = False,
        max_pixels: int = MAX_PIXELS,
    ) -> Critic:
        """Load from a Qwen-Image-Edit snapshot folder, a Qwen2.5-VL checkpoint folder or a hub id.

        A snapshot folder goes through :func:`critic_source` (its text encoder, or the hub model when that has no
        output layer); a checkpoint folder takes its processor from a sibling ``processor/`` folder or itself.
        ``quantize`` loads the weights in nf4 (bitsandbytes; every Linear but the output layer, the vision tower's
        too), computing in ``dtype``. The critic's ``source`` records the weights and how they run
        (``<ref>#bf16,nf4``). Missing weights raise :class:`CriticWeightsMissing` with how to get them.
        """
        from transformers import AutoProcessor, BitsAndBytesConfig, Qwen2_5_VLForConditionalGeneration

        model_ref, proc_ref, local = _resolve(str(ref), None if processor is None else str(processor))
        offline = local or _offline()
        if local:  # transformers would fill missing weights at random and only print a report
            weights.check_component(Qwen2_5_VLForConditionalGeneration, Path(model_ref), model_ref, "critic VLM")
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": offline}
        if quantize:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
            kwargs["device_map"] = {"": str(device)}  # quantised while loading, onto the device
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_ref, **kwargs)
            proc = AutoProcessor.from_pretrained(proc_ref, local_files_only=offline or Path(proc_ref).exists())
        except OSError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CriticWeightsMissing(
                f"VLM weights (critic, captions) {model_ref} not found ({reason}); {_how_to_get()}"
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            raise CriticError(f"cannot load the critic from {model_ref}: {e}") from None
        tag = precision_tag(str(dtype).removeprefix("torch."), ["model"] if quantize else [], whole=True)
        if not quantize:
            model = model.to(device)
        return cls(model, proc, max_pixels=max_pixels, source=with_precision(model_ref, tag))

    def chat(self, text: str) -> str:
        """The chat text for one image and ``text``, up to the start of the assistant's answer."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return QWEN_CHAT.format(question=text)

    def prompt(self, question: str) -> str:
        """The chat text for one image and ``question`` (with the yes/no instruction), up to the answer."""
        return self.chat(question.strip() + ANSWER_SUFFIX)

    def _inputs(self, text: str, image: Image.Image | np.ndarray) -> dict[str, torch.Tensor]:
        inputs = self.processor(text=[text], images=[_fit(image, self.max_pixels)], return_tensors="pt")
        device = next(self.model.parameters()).device  # an offloaded model's hooks move inputs on from here
        dtype = getattr(self.model, "dtype", None) or next(self.model.parameters()).dtype  # float even when 4-bit
        return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}

    def p_yes(self, image: Image.Image | np.ndarray, question: str) -> float:
        """Probability of "yes" against "no" as the first answer token (one forward pass, deterministic)."""
        return self.yes_no(image, question)[0]

    @torch.inference_mode()
    def yes_no(self, image: Image.Image | np.ndarray, question: str) -> tuple[float, float]:
        """(p_yes, p_no): the softmax over the yes and no tokens' logits at the answer position, summed per side."""
        inputs = self._inputs(self.prompt(question), image)
        logits = self.model(**inputs, logits_to_keep=1).logits[0, -1].float()
        probs = torch.softmax(logits[self.yes_ids + self.no_ids], dim=0)
        n_yes = len(self.yes_ids)
        return float(probs[:n_yes].sum()), float(probs[n_yes:].sum())

    @torch.inference_mode()
    def describe(self, image: Image.Image | np.ndarray, instruction: str, max_new_tokens: int = 77) -> str:
        """The model's answer to ``instruction`` about ``image`` in its own words (greedy decoding, so the same
        image and instruction always give the same text); :mod:`flenwheel.dataset.captions` writes captions with it."""
        inputs = self._inputs(self.chat(instruction.strip()), image)
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None, temperature=None
        )
        return str(self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    def answer(self, image: Image.Image | np.ndarray, checks: Sequence[Check]) -> list[CriticAnswer]:
        """Answer each check about ``image`` (one forward pass each)."""
        out = []
        for check in checks:
            p = self.p_yes(image, check.question)
            said_yes = p >= check.threshold
            out.append(
                CriticAnswer(
                    check.id, check.question, round(p, 6), check.expect, check.threshold, said_yes == check.expect
                )
            )
        return out

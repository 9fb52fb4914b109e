"""Training captions written by a VLM: what a photo shows besides who is in it.

A LoRA learns what its captions leave out. A caption that says "photo of sks, smiling, dark suit, window light,
blue wall" ties the trigger word to the person and lets the pose, expression, clothing, light and background vary
with the text; a bare "photo of sks" ties all of them to the trigger. So every dataset member gets a caption from
Qwen2.5-VL (the editor's own text encoder by default, the same model as the critic, :mod:`flenwheel.models.critic`),
asked to describe everything *but* the identity, and the description is cleaned before it is stored:

* one line of plain text, at most ``captions.max_words`` words, cut at the last full clause;
* the character's name is replaced by "the person" (the trigger word alone stands for the identity);
* the training caption is ``"photo of <trigger>, <description>"``.

A description with no words left after cleaning (a random-weight test model, a refusal) falls back to the
template caption and is recorded as such, with the VLM's raw text in ``params``. Captions are rows of
``captions`` with their history; the latest is the image's caption, a freeze copies it into the version, a
reviewer's edit in FiftyOne adds a row (:mod:`flenwheel.review.datasets`). Images that already have a caption are
not captioned again unless asked (``redo``), so a reviewer's edit is never overwritten silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import CaptionSettings, Character
from flenwheel.core.errors import FlenwheelError
from flenwheel.dataset.versions import caption_for
from flenwheel.models.critic import Critic
from flenwheel.store.workspace import Workspace

log = logging.getLogger(__name__)

# How a VLM opens a description without saying anything about the photo: "The image shows", "In this picture, we
# can see", "This is a photo of", "Here we see", "A photo of", "Sure, here is a description:". Anchored at the start,
# tried in order (the longer forms first), removed once; what follows is the description. Framing ("a close-up of",
# "a close-up photo of") is content, not an opener: it is kept without its article and medium (_FRAMING).
_MEDIUM = r"(?:photo(?:graph)?|image|picture|pic|snapshot|shot|scene|frame)"
_VERB = (
    r"(?:is\s+of|is\s+showing|shows?|depicts?|features?|captures?|displays?|presents?|portrays?|illustrates?|"
    r"contains?|showcases?|highlights?)"
)
_FRAME = (
    r"(?:extreme\s+)?(?:close[\s-]?up|portrait|headshot|head[\s-]and[\s-]shoulders(?:\s+shot)?|"
    r"(?:half|upper|full)[\s-](?:body|length)(?:\s+shot)?|medium(?:\s+close[\s-]?up)?\s+shot|"
    r"wide[\s-]angle\s+shot|wide\s+shot|profile\s+view|side\s+view|selfie)"
)
_IS = r"(?:is|appears\s+to\s+be|seems\s+to\s+be|looks\s+like)"
_OPENERS = re.compile(
    r"^(?:(?:sure|certainly)(?:[,.]\s*|\s+))?"  # a chat preamble
    r"(?:here(?:'s|\s+is)\s+(?:a|the)\s+(?:\w+\s+)?description(?:\s+of\s+(?:this|the)\s+" + _MEDIUM + r")?"
    r"\s*[:,.-]\s*)?"
    r"(?:"
    # "In this image, we can see ...", "In the photo, there is ...", "In this picture ..."
    r"(?:in|within|on)\s+(?:this|the)\s+" + _MEDIUM + r"\b(?!')\s*[,:]?\s*"
    r"(?:(?:we|you|one)\s+(?:can\s+)?see\b|there\s+(?:is|are)\b|(?:it\s+)?" + _VERB + r"\b)?"
    # "Here we see ...", "We can see ...", "Here is ..."
    r"|(?:here\s*,?\s*)?(?:we|you|one)\s+(?:can\s+)?see\b|here\s+(?:is|are)\b"
    # "This is a photo of ...", "It appears to be an image showing ...", "This is a close-up ..." (framing kept)
    r"|(?:this|it|that)\s+" + _IS + r"\s+(?:an?|the)\s+(?:" + _MEDIUM
    + r"\s+(?:of|showing|depicting|featuring|that\s+shows|in\s+which)\b|(?=" + _FRAME + r"))"
    # "The image is a photo of ...", "The image is a close-up of ..." (framing kept)
    r"|(?:this|the)\s+" + _MEDIUM + r"\s+" + _IS + r"\s+(?:an?|the)\s+(?:" + _MEDIUM + r"\s+of\b|(?=" + _FRAME + r"))"
    # "The picture is of ...", "This picture features ...", "The photograph depicts ..."
    r"|(?:this|the)\s+" + _MEDIUM + r"\s+" + _VERB + r"\b"
    # "A photo of ...", "An image showing ...", "Photo of ..."
    r"|(?:an?\s+)?" + _MEDIUM + r"\s+(?:of|showing|depicting|featuring)\b"
    # "Pictured is ...", "Pictured: ..."
    r"|pictured\b\s*(?:here\s+)?(?:is\b|are\b|:)"
    r")?",
    re.IGNORECASE,
)  # fmt: skip
# "A close-up photo of a man" / "a close-up of a man" -> "close-up of a man": the framing is what the photo shows.
_FRAMING = re.compile(r"^(?:an?\s+|the\s+)?(" + _FRAME + r")\s+(?:" + _MEDIUM + r"\s+)?(?=of\b)", re.IGNORECASE)
_KEEP = re.compile(r"[^\w ,.;:'()/-]+")


class CaptionError(FlenwheelError):
    """Captions cannot be written as configured; the message says what to change."""


@dataclass(frozen=True)
class Caption:
    caption: str
    source: str  # vlm | template
    raw: str


def clean_description(text: str, names: Sequence[str], max_words: int) -> str:
    """One line of plain words from a VLM's answer: openers dropped, names replaced, cut at ``max_words``.

    Returns "" when fewer than two words with letters remain (nothing usable).
    """
    line = _KEEP.sub(" ", " ".join(text.split()))
    line = " ".join(line.split())
    for name in sorted({n for n in names if len(n) >= 2}, key=len, reverse=True):
        # "barack_obama" also matches "Barack Obama" and "barack-obama"
        pattern = r"[\s_-]+".join(re.escape(part) for part in re.split(r"[\s_-]+", name))
        line = re.sub(rf"\b{pattern}\b", "the person", line, flags=re.IGNORECASE)
    line = _OPENERS.sub("", line, count=1).strip(" ,.;:-")
    line = _FRAMING.sub(r"\1 ", line, count=1)
    words = line.split()
    if len(words) > max_words:
        cut = " ".join(words[:max_words])
        # end at the last clause boundary inside the cut when there is one, not mid-phrase
        stop = max(cut.rfind(","), cut.rfind("."), cut.rfind(";"))
        line = cut[:stop] if stop > len(cut) // 2 else cut
    line = line.strip(" ,.;:-")
    if sum(any(ch.isalpha() for ch in w) for w in line.split()) < 2:
        return ""
    first = line.split()[0]
    # sentence case off ("A man" -> "a man"), acronyms kept ("TV studio")
    return line if len(first) > 1 and first.isupper() else line[0].lower() + line[1:]


def training_caption(trigger: str, description: str) -> str:
    """The caption a trainer reads: the trigger word first, then what the photo shows."""
    return f"photo of {trigger}, {description}" if description else f"photo of {trigger}"


def with_trigger(trigger: str, caption: str) -> str:
    """``caption`` as given, with the trigger word put in front when a person's edit left it out."""
    caption = " ".join(caption.split())
    return caption if re.search(rf"\b{re.escape(trigger)}\b", caption) else f"{trigger}, {caption}"


def names_of(character: Character) -> list[str]:
    """Words that name the character (its name and the parts of it), which a description must not contain."""
    parts = re.split(r"[_\-\s]+", character.name)
    return [character.name, *[p for p in parts if len(p) >= 3]]


def describe(
    vlm: Critic, image: Image.Image, character: Character, settings: CaptionSettings, fallback: str
) -> Caption:
    """Caption one image: the VLM's cleaned description after the trigger word, else ``fallback`` (template)."""
    raw = vlm.describe(image, settings.instruction, max_new_tokens=settings.max_new_tokens)
    description = clean_description(raw, names_of(character), settings.max_words)
    if description:
        return Caption(training_caption(character.trigger, description), "vlm", raw)
    return Caption(fallback, "template", raw)


def uncaptioned(catalog: Catalog, character: Character, ws: Workspace, redo: bool = False) -> list[dict[str, Any]]:
    """The members a version would hold now that have no caption yet (all of them with ``redo``), each with the
    template caption it falls back to."""
    prompts = ws.prompt_library(character)
    return [
        {
            "image_id": r["image_id"],
            "path": r["path"],
            "template": caption_for(character.trigger, r["origin"], r["prompt_id"], r["prompt"], prompts),
        }
        for r in catalog.selectable_members(character.name)
        if redo or r["caption"] is None
    ]


def caption_members(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    vlm: Callable[[], Critic],
    run_id: str | None,
    redo: bool = False,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Caption every member without a caption (every member with ``redo``); returns how many rows were written.

    ``vlm`` is called only when there is something to caption (loading a 7B model for nothing takes a minute).
    Rows are written per batch, each batch one transaction, so a killed run keeps the batches it finished and
    the next run captions only the rest.
    """
    todo = uncaptioned(catalog, character, ws, redo)
    settings = ws.settings.captions
    if not todo or settings.model is None:
        return 0
    try:
        model = vlm()
    except FlenwheelError as e:  # the way out is a setting the user may not know about: name it
        raise CaptionError(
            f"captions need the VLM (captions.model: {settings.model}): {e}; or set captions.model: null in "
            "configs/flenwheel.yaml for template captions"
        ) from None
    written = 0
    for start in range(0, len(todo), batch_size):
        rows = []
        for m in todo[start : start + batch_size]:
            with Image.open(ws.root / m["path"]) as img:
                rows.append(caption_row(model, img.convert("RGB"), m, character, settings))
        written += catalog.add_captions(rows, run_id)
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    log.info(f"captions of {character.name}: {written} written for {len(todo)} member(s)")
    return written


def caption_row(
    model: Critic, image: Image.Image, member: dict[str, Any], character: Character, settings: CaptionSettings
) -> dict[str, Any]:
    """The ``captions`` row of one member (``image_id``, ``template``): what a cluster worker sends back."""
    cap = describe(model, image, character, settings, member["template"])
    return {
        "image_id": member["image_id"],
        "caption": cap.caption,
        "source": cap.source,
        "model_ref": model.source,
        "params": {
            "instruction": settings.instruction,
            "raw": cap.raw,
            "max_new_tokens": settings.max_new_tokens,
            "max_words": settings.max_words,
            "decoding": "greedy",
        },
    }


def edit_training_text(instruction: str, after_caption: str | None, mode: str) -> str:
    """The editor LoRA's text for one triplet: the instruction, and with ``instruction+caption`` what the approved
    result shows (its caption), so the LoRA learns what the edit actually produced."""
    if mode == "instruction" or not after_caption:
        return instruction
    return f"{instruction.rstrip('. ')}. Result: {after_caption}"

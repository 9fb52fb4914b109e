"""Peak GPU memory and seconds per step of every gpu-24gb stage, on real-size models with random weights.

Why random weights: nothing can be downloaded, and memory and time depend on shapes, not on values. The real
FLUX.1-dev and Qwen-Image-Edit-2509 architectures (``flenwheel.tiny.SIZES["real"]``) are built with random weights
and run through flenwheel's *production* code under the gpu-24gb profile: ``ModelManager.stacked`` (so
``load_pipeline``: nf4, model CPU offload, VAE tiling; the LoRA stack as adapters) for generation and editing, the
trainers' ``prepare_model`` / ``train_step`` / ``sample`` for LoRA steps and checkpoint samples,
``QwenEditBackend.cache`` for the bf16 Qwen2.5-VL caching stage, and ``InsightFaceBackend`` for identity scoring.

Why one command per stage: a lent GPU machine has about 64 GiB of disk and 10 minutes per command. A stage builds
only the components it loads, in the form the profile reads them, and deletes them at the end unless ``--keep``
hands them to the next stage. The transformers are never written in bf16 (41 GB for Qwen's): they are initialised
on the GPU, passed through diffusers' own quantising loader and saved in nf4 (11.5 GB), a pre-quantised folder
that ``load_pipeline`` and the trainer load exactly as they load a quantised hub snapshot. Every measurement runs
in a fresh process, so a row's peak is its own; rows are appended to a JSON-lines file as soon as they are
measured, so a stage stopped at the time limit keeps what it measured.

    python bench/gpu_memory.py --plan                        # per stage: what it builds, disk, time, the command
    python bench/gpu_memory.py --stage qwen-infer --keep     # one stage (CUDA); appends rows to --out
    python bench/gpu_memory.py --table build/gpu-bench/*.jsonl  # all rows, all columns, the derived criteria
    python bench/gpu_memory.py --smoke                       # every stage with the tiny twins on the CPU, the table

docs/benchmarks.md holds the command sequence for a lent GPU and the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / "build" / "gpu-bench"  # /build/ is git-ignored, and a lent machine keeps it between calls
PIPELINES = {"qwen-image-edit": "QwenImageEditPlusPipeline", "flux": "FluxPipeline", "vibe": "VibePipeline"}
MODEL_PARTS = {"qwen-image-edit": ("transformer", "vae", "text_encoder"),
               "flux": ("transformer", "vae", "text_encoder", "text_encoder_2"),
               "vibe": ("transformer", "vae", "text_encoder")}  # fmt: skip
QUANTISED = {"qwen-image-edit", "flux"}  # gpu-24gb loads these transformers in nf4; VIBE runs in bf16
# GPU memory "GB" are GiB, as on the cards: a "24 GB" RTX 4090 has 24564 MiB; the seed's editor limit is "20 GB"
CARD_GIB = 24564 / 1024
EDITOR_LIMIT_GIB = 20.0
PROMPT_TOKENS_QWEN = 256  # cached Qwen prompt: ~196 vision tokens of the 384² condition + the instruction


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str | None  # the pipeline whose components it loads
    parts: tuple[str, ...]  # components it builds ("base": model_index.json, scheduler, tokenizers, processor)
    measures: str


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("identity", None, (), "insightface-layout ONNX models (SCRFD-shaped detector, ArcFace R50) through "
          "InsightFaceBackend: s/image and memory"),
    Stage("flux-infer", "flux", ("base", "transformer", "vae", "text_encoder", "text_encoder_2"),
          "FLUX.1-dev as load_pipeline loads it (nf4 transformer + T5, offload, tiling) with a character LoRA: "
          "one 1024² image"),
    Stage("flux-train", "flux", ("base", "transformer", "vae"),
          "FLUX QLoRA steps at each profile bucket and 1024, then a checkpoint sample"),
    Stage("qwen-encode", "qwen-image-edit", ("base", "vae", "text_encoder"),
          "the edit trainer's caching stage: bf16 Qwen2.5-VL + VAE encode triplets and sample prompts"),
    Stage("qwen-infer", "qwen-image-edit", ("base", "transformer", "vae", "text_encoder"),
          "the editor with its full stack (Lightning + multiple-angles + character LoRA), one 1024² edit; then the "
          "40-step CFG edit of the other categories"),
    Stage("qwen-train", "qwen-image-edit", ("base", "transformer", "vae"),
          "edit LoRA steps: target at the profile bucket (and 1024), condition at the pipeline's ~1 MP"),
    Stage("qwen-sample", "qwen-image-edit", ("base", "transformer", "vae"),
          "a checkpoint sample with the training state resident (condition at the pipeline's size)"),
    Stage("vibe-infer", "vibe", ("base", "transformer", "vae", "text_encoder"),
          "the vibe editor as the gpu-24gb profile loads it (bf16, no quantisation): one 1024² and one 2048² edit "
          "at the profile's steps and guidance"),
)}  # fmt: skip


def now() -> float:
    return time.perf_counter()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- memory


class Meter:
    """The peaks of one measured row: the CUDA caching allocator's counters, and the device's used memory and the
    process's RSS, which have no peak counters and are sampled by a thread every 10 ms.

    Device used (total - free, CUDA context included) is what a 24 GB card must hold; reserved is what the caching
    allocator kept; allocated is what tensors needed. The budget check uses the largest of the three.
    """

    def __init__(self) -> None:
        import psutil
        import torch

        self.torch, self.proc = torch, psutil.Process()
        self.cuda = torch.cuda.is_available()
        self.lock = threading.Lock()
        self.used = self.rss = self.used_at_start = 0.0
        threading.Thread(target=self._loop, daemon=True).start()

    def _sample(self) -> None:
        used = 0.0
        if self.cuda:
            free, total = self.torch.cuda.mem_get_info()
            used = (total - free) / 2**30
        rss = self.proc.memory_info().rss / 2**30
        with self.lock:
            self.used, self.rss = max(self.used, used), max(self.rss, rss)

    def _loop(self) -> None:
        while True:
            self._sample()
            time.sleep(0.01)

    def start(self) -> None:
        """Free what the previous row left (gc, the allocator's cache) and start the peaks afresh."""
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        with self.lock:
            self.used = self.rss = 0.0
        self._sample()
        self.used_at_start = self.used

    def stop(self) -> dict[str, float | None]:
        sync()
        self._sample()
        gpu = self.cuda
        return {
            "alloc_gib": self.torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
            "reserved_gib": self.torch.cuda.max_memory_reserved() / 2**30 if gpu else None,
            "used_gib": self.used if gpu else None,
            "used_at_start_gib": self.used_at_start if gpu else None,
            "total_gib": self.torch.cuda.mem_get_info()[1] / 2**30 if gpu else None,
            "rss_gib": self.rss,
        }


# --------------------------------------------------------------------------- building the random-weight models


@functools.cache
def meta_pipeline(kind: str, size: str) -> Any:
    """The pipeline of ``kind`` as ``flenwheel.tiny`` builds it, on the meta device: its components' configs and
    module shapes, without a byte of weights. The builder is reused (its save_pretrained caught) so that the bench
    can never drift from the configs the tests and the tiny twins use."""
    import torch

    from flenwheel import tiny
    from flenwheel.models import pipeline_class

    captured: dict[str, Any] = {}
    cls = pipeline_class(kind)
    with mock.patch.object(cls, "save_pretrained", lambda p, *_a, **_k: captured.update(pipe=p)), torch.device("meta"):
        tiny.BUILDERS[kind](Path(os.devnull), 0, size)
    return captured["pipe"]


def built(folder: Path, part: str) -> bool:
    return (folder / ("model_index.json" if part == "base" else f"{part}/config.json")).is_file()


def build_parts(kind: str, parts: Sequence[str], size: str, folder: Path) -> None:
    """Write the missing components of the random-weight pipeline ``kind`` into ``folder``, each atomically."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if built(folder, part):
            continue
        t0 = now()
        tmp = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=folder))
        try:
            if part == "base":
                _build_base(kind, tmp, folder)
            else:
                _build_model(kind, part, size, tmp / part)
                os.replace(tmp / part, folder / part)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"built {kind}/{part} ({size}) in {now() - t0:.0f} s", flush=True)


def _build_base(kind: str, tmp: Path, folder: Path) -> None:
    """model_index.json, scheduler, tokenizers and processor: the same at every size, taken from a tiny build."""
    from flenwheel.tiny import ensure_models

    src = ensure_models(tmp, "tiny", (kind,))[kind]
    for entry in sorted(src.iterdir(), key=lambda p: p.name == "model_index.json"):  # the index last: the marker
        if entry.name not in MODEL_PARTS[kind]:
            shutil.rmtree(folder / entry.name, ignore_errors=True)
            os.replace(entry, folder / entry.name)


def _build_model(kind: str, part: str, size: str, out: Path) -> None:
    """One component with random weights: bf16 on the GPU for real sizes (fp32 on the CPU for tiny), saved as the
    profile reads it: the real transformer in nf4, everything else as the hub holds it (bf16)."""
    import torch
    from diffusers import ModelMixin

    meta = getattr(meta_pipeline(kind, size), part)
    real = size == "real"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if real else torch.float32)
    try:
        with torch.device("cuda" if real else "cpu"):
            model = type(meta).from_config(meta.config) if isinstance(meta, ModelMixin) else type(meta)(meta.config)
    finally:
        torch.set_default_dtype(default)
    if real and part == "transformer" and kind in QUANTISED:
        model = _nf4(model, out.parent)
    model.save_pretrained(out)


def _nf4(model: Any, scratch: Path) -> Any:
    """``model`` quantised to nf4 by diffusers' own loader (the code that quantises a bf16 hub snapshot when
    load_pipeline or the trainer asks for nf4), fed the in-memory weights instead of a 41 GB file on disk."""
    import diffusers.models.modeling_utils as modeling_utils
    import torch
    from diffusers import BitsAndBytesConfig

    state = model.state_dict()
    src = scratch / "bf16-config"
    src.mkdir()
    model.save_config(src)
    (src / "diffusion_pytorch_model.safetensors").touch()  # found, never read: the state comes from memory
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    with mock.patch.object(modeling_utils, "load_state_dict", lambda *_a, **_k: state):
        return type(model).from_pretrained(src, quantization_config=quant, dtype=torch.bfloat16, use_safetensors=True)


def lora_target(name: str, targets: Sequence[str] | None) -> bool:
    """Whether a Linear gets a LoRA: peft's suffix rule for ``targets``; None: every Linear inside a block."""
    if targets is None:
        return "transformer_blocks." in name
    return any(name == t or name.endswith("." + t) for t in targets)


def write_lora(
    kind: str, size: str, path: Path, rank: int, targets: Sequence[str] | None, seed: int
) -> tuple[Path, int]:
    """A LoRA file of the real module shapes with random weights (``targets``: peft name suffixes, matched as peft
    matches them; None: every Linear of the transformer blocks), saved with the pipeline's save_lora_weights;
    returns the file and the number of adapted modules."""
    import diffusers
    import torch

    transformer = meta_pipeline(kind, size).transformer
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if size == "real" else torch.float32
    layers: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and lora_target(name, targets):
            a = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
            b = torch.randn(module.out_features, rank, generator=gen) * 0.01
            layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = a.to(dtype), b.to(dtype)
    getattr(diffusers, PIPELINES[kind]).save_lora_weights(path.parent, transformer_lora_layers=layers,
                                                          weight_name=path.name)  # fmt: skip
    return path, len(layers) // 2


# --------------------------------------------------------------------------- identity models (ONNX)

ARCFACE_KPS = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))


class _Graph:
    """A tiny helper for writing convolution networks as ONNX graphs with random weights (batch-norms folded)."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        self.np, self.rng = np, np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int, name: str, act: bool = True, bias: float = 0.0
    ) -> str:
        np = self.np
        weight = self.rng.standard_normal((cout, cin, k, k)) * math.sqrt(2 / (cin * k * k))
        w = self.const(name + ".w", weight.astype(np.float32))
        b = self.const(name + ".b", np.full(cout, bias, np.float32))
        y = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        if not act:
            return y
        slope = self.const(name + ".slope", np.full((cout, 1, 1), 0.25, np.float32))
        return self.node("PRelu", [y, slope], name + ".act")

    def save(self, path: Path, name: str, inputs: list[Any], outputs: list[Any]) -> int:
        import onnx
        from onnx import helper

        model = helper.make_model(helper.make_graph(self.nodes, name, inputs, outputs, self.inits),
                                  opset_imports=[helper.make_opsetid("", 13)])  # fmt: skip
        model.ir_version = 8
        onnx.save(model, str(path))
        return sum(int(self.np.prod(t.dims)) for t in self.inits)


def write_recognizer(path: Path) -> int:
    """ArcFace's IResNet-50 (buffalo_l's w600k_r50: 112² input, 512-d output) with random weights; returns params."""
    from onnx import TensorProto, helper

    g = _Graph(1)
    x = g.conv("data", 3, 64, 3, 1, "stem")
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 14, 3), strict=True)):
        for i in range(blocks):
            stride, name = (2 if i == 0 else 1), f"layer{stage + 1}.{i}"
            h = g.conv(g.conv(x, cin, planes, 3, 1, name + ".c1"), planes, planes, 3, stride, name + ".c2", act=False)
            skip = x if stride == 1 and cin == planes else g.conv(x, cin, planes, 1, stride, name + ".ds", act=False)
            x, cin = g.node("Add", [h, skip], name + ".add"), planes
    flat = g.node("Flatten", [x], "flatten", axis=1)
    fc = g.const("fc.w", (g.rng.standard_normal((512 * 7 * 7, 512)) / math.sqrt(512 * 7 * 7)).astype(g.np.float32))
    g.node("MatMul", [flat, fc], "fc1")
    return g.save(path, "iresnet50", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
                  [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 512])])  # fmt: skip


def write_detector(path: Path) -> int:
    """A detector with SCRFD's interface (640² input; scores, boxes and five landmarks at strides 8, 16 and 32,
    two anchors) and a plain backbone of about det_10g's cost (~7 G multiply-adds). Its score heads are biased
    so that a random-weight network proposes no faces: the NMS of a real photo (a handful of boxes) is not in it."""
    from onnx import TensorProto, helper

    g = _Graph(2)
    x = g.conv("input.1", 3, 32, 3, 2, "stem")
    x = g.conv(g.conv(x, 32, 64, 3, 2, "s4a"), 64, 64, 3, 1, "s4b")
    feats, cin = [], 64
    for stride, cout in ((8, 128), (16, 256), (32, 512)):
        x = g.conv(g.conv(x, cin, cout, 3, 2, f"s{stride}a"), cout, cout, 3, 1, f"s{stride}b")
        feats.append((stride, x, cout))
        cin = cout
    outs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride, f, c in feats:
        h = g.conv(f, c, 64, 3, 1, f"head{stride}")
        for what, ch, width, bias in (("score", 2, 1, -20.0), ("bbox", 8, 4, 0.0), ("kps", 20, 10, 0.0)):
            y = g.conv(h, 64, ch, 1, 1, f"{what}{stride}.conv", act=False, bias=bias)
            y = g.node("Sigmoid", [y], f"{what}{stride}.sig") if what == "score" else y
            y = g.node("Transpose", [y], f"{what}{stride}.t", perm=[0, 2, 3, 1])
            shape = g.const(f"{what}{stride}.shape", g.np.array([-1, width], g.np.int64))
            outs[what].append(g.node("Reshape", [y, shape], f"{what}_{stride}"))
    names = outs["score"] + outs["bbox"] + outs["kps"]
    widths = [1] * 3 + [4] * 3 + [10] * 3
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n_{n}", w]) for n, w in zip(names, widths, strict=True)
    ]
    return g.save(path, "scrfd_layout", inputs, outputs)


# --------------------------------------------------------------------------- measuring


@dataclass
class Ctx:
    """What a measuring process knows: the stage, where its models and scratch files are, the run profile."""

    stage: Stage
    size: str
    folder: Path | None  # the pipeline folder of the stage's kind
    work: Path  # scratch: images, LoRA files, caches (the parent deletes it)
    steps: int  # measured steps after one warm-up step
    out: Path
    ws: Any
    profile: Any  # gpu-24gb (real) or cpu-tiny (tiny), with the stage models pointed at ``folder``
    meter: Meter

    @property
    def real(self) -> bool:
        return self.size == "real"

    def emit(self, key: str, what: str, px: str | int | None, mem: dict[str, Any] | None, **fields: Any) -> None:
        """Append one row to ``out`` at once, so a stage stopped at its time limit keeps what it measured."""
        import torch

        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for name in ("diffusers", "transformers", "peft", "bitsandbytes", "onnxruntime"):
            with contextlib.suppress(Exception):
                versions[name] = __import__(name).__version__
        row = {
            "key": key, "stage": self.stage.name, "what": what, "px": None if px is None else str(px),
            "size": self.size, "profile": self.profile.name,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
            "gpu": torch.cuda.is_available(), **(mem or {}), "s_step": None, "s_image": None, "load_s": None,
            "settings": "", **fields, "versions": versions, "date": datetime.date.today().isoformat(),
        }  # fmt: skip
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def image(px: int, seed: int, path: Path | None = None) -> Any:
    """A smooth random RGB image (content does not change memory or time); saved as PNG when ``path`` is given."""
    import numpy as np
    from PIL import Image

    small = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((px, px), Image.BICUBIC)
    if path is not None:
        img.save(path)
    return img


def timed_call(pipe: Any, **kwargs: Any) -> tuple[float | None, float]:
    """One pipeline call: seconds per denoising step (the first step excluded) and the whole call's seconds."""
    import torch

    marks: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kw: dict) -> dict:
        sync()
        marks.append(now())
        return kw

    sync()
    t0 = now()
    pipe(**kwargs, callback_on_step_end=on_step, generator=torch.Generator("cpu").manual_seed(0))
    sync()
    wall = now() - t0
    return ((marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None), wall


def train_steps(trainer: Any, transformer: Any, params: Any, optimizer: Any, item: dict, steps: int) -> float:
    """Seconds per optimizer step of the trainer's own ``train_step`` (one warm-up step excluded)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    marks = []
    for step in range(steps + 1):
        trainer.train_step(transformer, params, optimizer, [item], lambda _k: [0], gen, step)
        sync()
        marks.append(now())
    return (marks[-1] - marks[0]) / steps


def stage_settings(stage: Any) -> str:
    return (f"nf4 {'+'.join(stage.quantize) or 'none'}, offload {stage.offload}, "
            f"tiling {'on' if stage.vae_tiling else 'off'}")  # fmt: skip


def trainer_settings(s: Any) -> str:
    return (
        f"rank {s.rank}, {'nf4 base' if s.qlora else 'full-precision base'}, {s.optimizer}, "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {len(s.target_modules or [])} targets"
    )


def measure_identity(ctx: Ctx) -> None:
    import numpy as np
    import onnxruntime as ort

    from flenwheel.identity.backends import Face, InsightFaceBackend

    pack = ctx.work / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    det_params, rec_params = write_detector(pack / "det_10g.onnx"), write_recognizer(pack / "w600k_r50.onnx")
    settings = ctx.ws.settings.identity.model_copy(
        update={"insightface_root": ctx.work / "insightface", "insightface_pack": "buffalo_l"}
    )
    n = 8 if ctx.real else 3
    images = [np.asarray(image(1024, i)) for i in range(n + 1)]
    scale = 400 / 112  # the five landmarks of a 400-px face at (312, 262)
    face = Face((312.0, 262.0, 712.0, 762.0), 0.9, np.array(ARCFACE_KPS) * scale + np.array([312.0, 262.0]))
    refs = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    models = f"detector {det_params / 1e6:.1f} M params, recognizer {rec_params / 1e6:.1f} M params"
    variants = [("identity-cpu", -1, "ctx_id=-1 as production loads it: ONNX Runtime on the CPU")]
    gpu_provider = "CUDAExecutionProvider" in ort.get_available_providers()
    if gpu_provider:
        variants.append(("identity-gpu", 0, "ctx_id=0: ONNX Runtime's CUDA provider"))
    for key, ctx_id, how in variants:
        ctx.meter.start()
        t0 = now()
        backend = InsightFaceBackend(settings, ctx_id=ctx_id)  # the production loader, given a pack folder
        load_s = now() - t0

        def score(rgb: Any, backend: Any = backend) -> None:
            backend.detect(rgb)
            backend.similarities(backend.embed(rgb, face), refs)

        score(images[0])  # warm-up
        t0 = now()
        for rgb in images[1:]:
            score(rgb)
        s_image = (now() - t0) / n
        ctx.emit(key, f"identity scoring, insightface backend ({how.split(':')[0]})", 1024, ctx.meter.stop(),
                 s_image=s_image, load_s=load_s,
                 settings=f"{how}; buffalo_l-shaped ONNX with random weights ({models}); detect on the 640-px "
                          "copy + embed one aligned face + compare to 4 references")  # fmt: skip
        del backend
    if not gpu_provider:
        ctx.emit("identity-gpu", "identity scoring on the GPU (ctx_id=0)", 1024, None,
                 settings="not run: this onnxruntime has no CUDAExecutionProvider (the pinned onnxruntime is the CPU "
                          "build, so production scores faces on the CPU)")  # fmt: skip


def measure_flux_infer(ctx: Ctx) -> None:
    from flenwheel.config import LoraSpec
    from flenwheel.models import ModelManager, Sampling, StackEntry
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
    kwargs = {"prompt": "photo of fw_person walking in a park, full body", "height": sampling.height,
              "width": sampling.width, "guidance_scale": sampling.guidance}  # fmt: skip
    timed_call(loaded.pipe, num_inference_steps=2, **kwargs)  # warm-up
    s_step, s_image = timed_call(loaded.pipe, num_inference_steps=sampling.steps, **kwargs)
    ctx.emit("flux-infer", "FLUX.1-dev generation with a character LoRA (adapter)", sampling.width, ctx.meter.stop(),
             s_step=s_step, s_image=s_image, load_s=load_s,
             settings=f"{stage_settings(stage)}, {sampling.steps} steps, guidance {sampling.guidance}, LoRA rank "
                      f"{s.rank} on {modules} modules, fused {'yes' if loaded.fused else 'no'}")  # fmt: skip
    manager.release()


def _editor_stacks(ctx: Ctx) -> tuple[list[Any], list[Any], str]:
    """The angles stack of the gpu-24gb editor (Lightning + multiple-angles) plus a character editor LoRA, with
    LoRA files of the real module shapes standing for the hub files; and the character-only stack."""
    from flenwheel.config import LoraSpec
    from flenwheel.models import StackEntry
    from flenwheel.training import QwenEditBackend

    library = ctx.ws.loras()
    uses = ctx.ws.profile("gpu-24gb").editor.loras.get("angles", [])
    s = QwenEditBackend.with_targets(ctx.profile.edit_trainer)
    shapes = {"lightning-4step": (64, None), "lightning-8step": (64, None),  # every Linear of the 60 blocks
              "multiple-angles": (16, QwenEditBackend.default_targets)}  # fmt: skip
    angles, notes = [], []
    for i, use in enumerate(uses):
        rank, targets = shapes.get(use.name, (16, QwenEditBackend.default_targets))
        path, modules = write_lora("qwen-image-edit", ctx.size, ctx.work / f"{use.name}.safetensors", rank, targets, i)
        spec = library[use.name].model_copy(update={"ref": str(path), "weight_name": None, "revision": None})
        angles.append(StackEntry(use.name, spec, spec.scale if use.scale is None else use.scale))
        notes.append(f"{use.name} r{rank}×{modules}")
    path, modules = write_lora("qwen-image-edit", ctx.size, ctx.work / "character.safetensors", s.rank,
                               s.target_modules, 9)  # fmt: skip
    character = StackEntry("character", LoraSpec(ref=str(path), applies_to="qwen-image-edit"), 1.0)
    notes.append(f"character r{s.rank}×{modules}")
    return [*angles, character], [character], ", ".join(notes)


def measure_qwen_infer(ctx: Ctx) -> None:
    from flenwheel.models import ModelManager, Sampling

    full, own, notes = _editor_stacks(ctx)
    stage = ctx.profile.editor
    px = 1024 if ctx.real else 64
    source = image(px, 0)
    manager = ModelManager(ctx.ws, ctx.profile)
    runs = (
        ("qwen-infer-angles", full, "将镜头向左旋转45度 Rotate the camera 45 degrees to the left.",
         "editor, angles stack: Lightning + multiple-angles + character (the full stack)"),
        ("qwen-infer-other", own, "Relight with soft even studio lighting; keep the person unchanged.",
         "editor, other categories: character LoRA only, the profile's steps and CFG"),
    )  # fmt: skip
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
        if key == "qwen-infer-angles":
            timed_call(loaded.pipe, num_inference_steps=1, **kwargs)  # warm-up
        # a distilled stack's few steps all run; 40 CFG steps would take minutes: a few are timed, the rest added
        run = sampling.steps if sampling.steps <= 8 else min(sampling.steps, ctx.steps + 2)
        s_step, wall = timed_call(loaded.pipe, num_inference_steps=run, **kwargs)
        s_image = wall + (sampling.steps - run) * (s_step or 0.0)
        passes = 2 if (sampling.true_cfg_scale or 1.0) > 1.0 else 1
        timing = "" if run == sampling.steps else f"; {run} of {sampling.steps} steps run, s/image adds the rest"
        ctx.emit(key, what, sampling.width or px, ctx.meter.stop(), s_step=s_step, s_image=s_image, load_s=load_s,
                 steps=sampling.steps,
                 settings=f"{stage_settings(stage)}, {sampling.steps} steps × {passes} pass(es) (true CFG "
                          f"{sampling.true_cfg_scale}), LoRAs {notes if stack is full else notes.split(', ')[-1]}, "
                          f"fused {'yes' if loaded.fused else 'no'}{timing}")  # fmt: skip
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
    optimizer = trainer._optimizer(params)
    load_s = now() - t0
    transformer.train()
    cfg, scale = transformer.config, backend.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    for i, res in enumerate(sorted({*s.resolutions, 1024 if ctx.real else 128})):
        if i:
            ctx.meter.start()
        item = {"latents": torch.randn(cfg.in_channels // 4, res // scale, res // scale, generator=g),
                "prompt_embeds": torch.randn(s.max_sequence_length, cfg.joint_attention_dim, generator=g),
                "pooled": torch.randn(cfg.pooled_projection_dim, generator=g)}  # fmt: skip
        s_step = train_steps(trainer, transformer, params, optimizer, item, ctx.steps)
        extra = "" if res in s.resolutions else " (a bucket the profile does not use)"
        ctx.emit(f"flux-train@{res}", f"FLUX LoRA training step, {res}² bucket{extra}", res, ctx.meter.stop(),
                 s_step=s_step, load_s=None if i else load_s, profile_bucket=res in s.resolutions,
                 settings=f"{trainer_settings(s)}, {s.max_sequence_length} T5 tokens, batch {s.batch_size}; "
                          f"{'load included' if not i else 'model resident'}")  # fmt: skip
    ctx.meter.start()
    cond = {"prompt_embeds": torch.randn(s.max_sequence_length, cfg.joint_attention_dim, generator=g),
            "pooled": torch.randn(cfg.pooled_projection_dim, generator=g)}  # fmt: skip
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
    return {"latents": torch.randn(cfg.out_channels, res // scale, res // scale, generator=g),
            "control": torch.randn(cfg.out_channels, ch // scale, cw // scale, generator=g),
            "prompt_embeds": torch.randn(PROMPT_TOKENS_QWEN, cfg.joint_attention_dim, generator=g)}  # fmt: skip


def measure_qwen_train(ctx: Ctx, sample: bool = False) -> None:
    import torch

    from flenwheel.training import LoraTrainer, QwenEditBackend

    backend = QwenEditBackend(ctx.ws, ctx.profile, ctx.profile.edit_trainer, str(ctx.folder))
    trainer = LoraTrainer(ctx.ws, None, backend)
    s = backend.settings
    ctx.meter.start()
    t0 = now()
    transformer, params, _ = trainer.prepare_model(s)
    optimizer = trainer._optimizer(params)
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
        ctx.emit(f"qwen-train@{res}", what, res, ctx.meter.stop(), s_step=s_step, load_s=None if i else load_s,
                 profile_bucket=res in s.resolutions,
                 settings=f"{trainer_settings(s)}, {PROMPT_TOKENS_QWEN} prompt tokens, batch {s.batch_size}; "
                          f"{'load included' if not i else 'model resident'}")  # fmt: skip
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
    ctx.emit("qwen-sample", "edit-LoRA checkpoint sample, training state resident", s.sample_size, ctx.meter.stop(),
             s_image=now() - t0, load_s=load_s,
             settings=f"{s.sample_steps} steps, true CFG 1, output at sample_size {s.sample_size}, condition from a "
                      f"{1024 if ctx.real else 128}² source at the pipeline's size; LoRA + {s.optimizer} optimizer "
                      "state resident")  # fmt: skip


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
        ("qwen-encode", f"edit-trainer caching: {n} triplets (instruction + condition + target)",
         lambda: backend.cache(examples, cache), n),
        ("qwen-encode-samples", f"edit-trainer caching: {len(s.sample_prompts)} sample instructions",
         lambda: backend.cache_samples(list(s.sample_prompts), cache), len(s.sample_prompts)),
    ):  # fmt: skip
        if not count:
            continue
        ctx.meter.start()
        sync()
        t0 = now()
        run()
        sync()
        load_s = backend.loads[-1]
        ctx.emit(key, what, px, ctx.meter.stop(), s_image=(now() - t0 - load_s) / count, load_s=load_s, count=count,
                 settings=f"Qwen2.5-VL text encoder + VAE in {ctx.profile.dtype} (not quantised), VL sees the "
                          "condition at ~384², VAE encodes it at the pipeline's ~1 MP and the target at its bucket "
                          f"{s.resolutions}; s/image per item, the load not included")  # fmt: skip


def measure_vibe_infer(ctx: Ctx) -> None:
    """The vibe editor through the model manager, as the enrichment runs it: a 1024² and a 2048² edit."""
    from flenwheel.editing.vibe import VibeSampling
    from flenwheel.models import ModelManager

    stage = ctx.profile.vibe_editor
    sampling = VibeSampling.for_stage(stage)
    manager = ModelManager(ctx.ws, ctx.profile)
    ctx.meter.start()
    t0 = now()
    loaded, _ = manager.stacked("vibe", [])
    load_s = now() - t0
    prompt = "Relight with soft even studio lighting; keep the person unchanged."
    kwargs = {"prompt": prompt, "guidance_scale": sampling.guidance_scale,
              "image_guidance_scale": sampling.image_guidance_scale,
              "resolution_binning": sampling.resolution_binning, "revert_resize": sampling.revert_resize}  # fmt: skip
    for i, px in enumerate((1024, 2048) if ctx.real else (64, 128)):
        if i:
            ctx.meter.start()  # the weights stay resident: this row's peak is the larger edit's
        source = image(px, i)
        if i == 0:
            timed_call(loaded.pipe, image=source, num_inference_steps=1, **kwargs)  # warm-up
        run = min(sampling.steps, ctx.steps + 2)
        s_step, wall = timed_call(loaded.pipe, image=source, num_inference_steps=run, **kwargs)
        s_image = wall + (sampling.steps - run) * (s_step or 0.0)
        passes = 3 if sampling.guidance_scale > 1 and sampling.image_guidance_scale >= 1 else 2
        timing = "" if run == sampling.steps else f"; {run} of {sampling.steps} steps run, s/image adds the rest"
        what = f"vibe editor, one {px}² edit ({ctx.profile.dtype}, unquantised)"
        ctx.emit(f"vibe-infer-{px}", what, px, ctx.meter.stop(),
                 s_step=s_step, s_image=s_image, load_s=load_s if i == 0 else None, steps=sampling.steps,
                 settings=f"{stage_settings(stage)}, {sampling.steps} steps × {passes} branch(es) (guidance "
                 f"{sampling.guidance_scale}, image guidance {sampling.image_guidance_scale}){timing}")  # fmt: skip
    manager.release()


MEASURES: dict[str, Callable[[Ctx], None]] = {
    "identity": measure_identity, "flux-infer": measure_flux_infer, "flux-train": measure_flux_train,
    "qwen-encode": measure_qwen_encode, "qwen-infer": measure_qwen_infer, "qwen-train": measure_qwen_train,
    "qwen-sample": lambda ctx: measure_qwen_train(ctx, sample=True), "vibe-infer": measure_vibe_infer,
}  # fmt: skip


def measure(name: str, size: str, models: Path, work: Path, out: Path, steps: int) -> None:
    """Run one stage's measurements in this (fresh) process; a failure becomes a row that says so."""
    import torch

    from flenwheel.workspace import Workspace

    stage = STAGES[name]
    folder = models / size / stage.kind if stage.kind else None
    ws = Workspace(root=work / "root", configs=REPO / "configs")
    profile = ws.profile("gpu-24gb" if size == "real" else "cpu-tiny")
    if folder is not None:
        key = {"flux": "generator", "qwen-image-edit": "editor", "vibe": "vibe_editor"}[stage.kind]
        staged = getattr(profile, key).model_copy(update={"model": str(folder), "loras": {}})
        profile = profile.model_copy(update={key: staged})
    ctx = Ctx(stage, size, folder, work, steps, out, ws, profile, Meter())
    try:
        MEASURES[name](ctx)
    except Exception as e:
        kind = "out of GPU memory" if isinstance(e, torch.cuda.OutOfMemoryError) else type(e).__name__
        mem = ctx.meter.stop()
        message = (str(e).splitlines() or [""])[0][:200]
        ctx.emit(f"{name}-failed", f"{name} FAILED ({kind}): {message}", None, mem)
        raise


# --------------------------------------------------------------------------- running stages


def child(args: list[str]) -> int:
    """A fresh Python process for one build or measurement: its GPU memory is its own and is all freed at exit."""
    return subprocess.run([sys.executable, __file__, *args], check=False).returncode


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def run_stages(names: Sequence[str], size: str, models: Path, out: Path, keep: bool, steps: int) -> int:
    """Build what each stage loads, measure it, and delete a pipeline after the last stage that loads it."""
    failures = 0
    for i, name in enumerate(names):
        stage = STAGES[name]
        work = models / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = now()
        code, phase = 0, "build"
        if stage.kind:
            folder = models / size / stage.kind
            missing = [p for p in stage.parts if not built(folder, p)]
            if missing:
                code = child(["--build-parts", stage.kind, *missing, "--size", size, "--models", str(models)])
        if code == 0:
            rows_before, phase = len(_lines(out)), "measurement"
            code = child(["--measure", name, "--size", size, "--models", str(models), "--out", str(out),
                          "--steps", str(steps)])  # fmt: skip
        if code != 0:
            failures += 1
            if phase == "build" or not any(f'"{name}-failed"' in line for line in _lines(out)[rows_before:]):
                # a failed build, or a process that could not write its own row (killed by the OOM killer, say)
                row = {"key": f"{name}-failed", "stage": name, "size": size,
                       "what": f"{name} FAILED: the {phase} process exited with {code} (its log says why)"}  # fmt: skip
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        later = {STAGES[n].kind for n in names[i + 1 :]}
        if stage.kind and not keep and stage.kind not in later:
            shutil.rmtree(models / size / stage.kind, ignore_errors=True)
        print(f"stage {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {now() - t0:.0f} s", flush=True)
    for empty in (models / "work", models / size):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only if nothing was kept there
    return failures


# --------------------------------------------------------------------------- the table


def load_rows(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of the given JSON-lines files; a key measured again replaces the earlier row."""
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.pop(row["key"], None)
                if not row["key"].endswith("-failed"):
                    rows.pop(f"{row['stage']}-failed", None)
                rows[row["key"]] = row
    order = list(STAGES)
    return sorted(rows.values(), key=lambda r: order.index(r["stage"]) if r["stage"] in order else len(order))


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def largest(row: dict[str, Any]) -> float | None:
    values = [row.get(k) for k in ("alloc_gib", "reserved_gib", "used_gib")]
    return max((v for v in values if v is not None), default=None)


def fits(gib: float, budget: float) -> str:
    """Within the profile's peak budget; over it but inside a 24 GB card; or beyond the card."""
    return "ok" if gib <= budget else "over budget" if gib <= CARD_GIB else "over 24 GB"


def table(rows: list[dict[str, Any]]) -> str:
    """The whole Markdown table, then the seed's criteria derived from it, with a verdict each."""
    from flenwheel.workspace import Workspace

    if not rows:
        return "no rows\n"
    first = next((r for r in rows if "versions" in r), rows[0])
    cpu = not any(r.get("gpu") for r in rows)
    budget = 22.0
    profile_name = first.get("profile") or ("cpu-tiny" if cpu else "gpu-24gb")
    ws = Workspace(root=tempfile.gettempdir(), configs=REPO / "configs")
    gpu24, profile = ws.profile("gpu-24gb"), ws.profile(profile_name)
    budget = gpu24.peak_budget_gib or budget
    lines = [
        f"device: {first.get('device', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
        + f"; profile {profile_name}; {first.get('date', '')}",
    ]
    if cpu:
        lines.append("**CPU smoke run with the tiny twins: memory is the process's peak RSS, no GPU figure; the times "
                     "say nothing about a GPU.**")  # fmt: skip
    lines += [
        "",
        f"| stage | measurement | px | max allocated GiB{' (CPU: peak RSS)' if cpu else ''} | max reserved GiB | "
        f"device used GiB | largest vs {budget:g} GiB budget | s/step | s/image | load s | settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        big = largest(r)
        if r.get("gpu"):
            mem = [_f(r.get("alloc_gib")), _f(r.get("reserved_gib")), _f(r.get("used_gib"))]
            verdict = "-" if big is None else f"{big:.2f} {fits(big, budget)}"
        else:
            rss = r.get("rss_gib")
            mem = ["-" if rss is None else f"{rss:.2f} RSS (CPU)", "-", "-"]
            verdict = "n/a (CPU)" if rss is not None else "-"
        cells = [r["stage"], r["what"], r.get("px") or "-", *mem, verdict, _f(r.get("s_step")), _f(r.get("s_image")),
                 _f(r.get("load_s"), 1), r.get("settings", "")]  # fmt: skip
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", *criteria(rows, profile, budget, cpu)]
    return "\n".join(lines) + "\n"


def criteria(rows: list[dict[str, Any]], profile: Any, budget: float, cpu: bool) -> list[str]:
    """The seed's criteria from the rows: seconds per 1024² edit, hours to train on 10 triplets, stage peaks."""
    by = {r["key"]: r for r in rows}
    s = profile.edit_trainer
    out = ["| criterion | figure | target | verdict |", "|---|---|---|---|"]

    def verdict(value: float | None, ok: bool) -> str:
        if value is None:
            return "not measured"
        if cpu:
            return "n/a (CPU smoke)"
        return "pass" if ok else "FAIL"

    for key, what in (
        ("qwen-infer-angles", "seconds per 1024² edit, angles stack (Lightning + angles + character)"),
        ("qwen-infer-other", "seconds per 1024² edit, other categories (character LoRA, CFG)"),
    ):
        v = by.get(key, {}).get("s_image")
        where = f" at {by[key].get('px')} px on {by[key].get('device')}" if v is not None else ""
        out.append(
            f"| {what} | {_f(v, 1)} s{where} | < 60 s on a 24 GB card | "
            f"{verdict(v, v is not None and v < 60)}{' (on this GPU)' if v is not None and not cpu else ''} |"
        )
    train = next((r for r in rows if r["key"].startswith("qwen-train@") and r.get("profile_bucket")), None)
    enc, enc_s = by.get("qwen-encode"), by.get("qwen-encode-samples")
    smp, ident = by.get("qwen-sample"), by.get("identity-cpu")
    hours = None
    n_samples = len(s.sample_prompts) * len(s.sample_seeds)
    checkpoints = math.ceil(s.steps / s.checkpoint_every)
    if train and train.get("s_step") is not None:
        total = (train.get("load_s") or 0.0) + s.steps * train["s_step"]
        if enc and enc.get("s_image") is not None:
            total += (enc.get("load_s") or 0.0) + 10 * enc["s_image"]
        if enc_s and enc_s.get("s_image") is not None:
            total += (enc_s.get("load_s") or 0.0) + len(s.sample_prompts) * enc_s["s_image"]
        per_sample = (smp or {}).get("s_image") or 0.0
        per_sample += (ident or {}).get("s_image") or 0.0
        total += checkpoints * n_samples * per_sample
        hours = total / 3600
    out.append(f"| hours to train the editor LoRA on 10 triplets | {_f(hours, 2)} h | < 2 h | "
               f"{verdict(hours, hours is not None and hours < 2)} |")  # fmt: skip
    stages: dict[str, float] = {}
    for r in rows:
        big = largest(r) if r.get("gpu") else r.get("rss_gib")
        if big is not None:
            stages[r["stage"]] = max(stages.get(r["stage"], 0.0), big)
    for name, big in stages.items():
        limit = EDITOR_LIMIT_GIB if name == "qwen-infer" else budget
        target = f"< {EDITOR_LIMIT_GIB:g} GiB (the editor)" if name == "qwen-infer" else f"<= {budget:g} GiB budget"
        unit = "GiB RSS (CPU)" if cpu else "GiB"
        out.append(f"| peak of {name} | {big:.2f} {unit} | {target} | {verdict(big, big < limit)} |")
    missing = [n for n in STAGES if n not in stages]
    if missing:
        out.append(f"| stages without a row | {', '.join(missing)} | every stage measured | not measured |")
    out += [
        "",
        f"Hours = load + {s.steps} steps × s/step (edit trainer, profile bucket {s.resolutions}, batch {s.batch_size}, "
        f"grad_accum {s.grad_accum}: the step count does not grow with 10 triplets) + caching (load + 10 × s/triplet, "
        f"load + {len(s.sample_prompts)} sample prompts) + {checkpoints} checkpoints × {n_samples} samples × "
        "(s/sample + identity s/image). Seconds per edit: the whole pipeline call (prompt encoding, VAE encode and "
        "decode, offload transfers) at the stack's steps; where fewer steps ran, s/image adds the missing ones at "
        "s/step. Memory: the largest of max allocated, max reserved and device used (CUDA context included); peaks "
        "measured on a bigger GPU hold for a 24 GB card only as far as the allocator's behaviour does (a full card "
        "frees cached blocks before it fails), and seconds measured on a faster GPU are a lower bound for it.",
    ]
    return out


# --------------------------------------------------------------------------- the plan

DISK_WRITE_GBS, DISK_READ_GBS, HOST_DEVICE_GBS = 0.5, 1.0, 10.0  # conservative: virtual disks, pageable copies
TFLOPS = 300.0  # effective for nf4 layers (dequantise + bf16 GEMM) and attention; a bare bf16 GEMM ran at 790
START_S = 25.0  # one Python process importing torch, diffusers, transformers and flenwheel
SEQUENCE = (
    ("flux-infer", "flux-train"),
    ("identity", "qwen-encode"),
    ("qwen-infer",),
    ("qwen-train", "qwen-sample"),
    ("vibe-infer",),
)


def sizes() -> dict[tuple[str, str], tuple[float, float, int, int]]:
    """(kind, part) -> (GB on disk as built, GB in bf16, parameters, parameters in Linear layers)."""
    import torch

    out = {}
    for kind in PIPELINES:
        pipe = meta_pipeline(kind, "real")
        for part in MODEL_PARTS[kind]:
            m = getattr(pipe, part)
            n = sum(p.numel() for p in m.parameters())
            lin = sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Linear))
            # nf4: half a byte per weight + one fp32 absmax per 64 (no double quantisation), the rest bf16
            disk = (lin * (0.5 + 4 / 64) + 2 * (n - lin)) if part == "transformer" and kind in QUANTISED else 2 * n
            out[kind, part] = (disk / 1e9, 2 * n / 1e9, n, lin)
    return out


def lora_gb(rank: int, targets: Sequence[str] | None) -> float:
    import torch

    total = 0
    for name, m in meta_pipeline("qwen-image-edit", "real").transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and lora_target(name, targets):
            total += rank * (m.in_features + m.out_features)
    return 2 * total / 1e9


def estimate(name: str, have: set[str], sz: dict) -> tuple[float, float, str]:
    """Disk (GB) and minutes of one stage on a lent H200 when the parts in ``have`` are already built."""
    from flenwheel.training import QwenEditBackend

    stage = STAGES[name]
    if stage.kind is None:
        return 0.25, (START_S * 2 + 30) / 60, "ONNX models ~0.2 GB, CPU scoring"
    kind = stage.kind
    disk = sum(sz[kind, p][0] for p in stage.parts if p != "base") + 0.02
    build = 0.0
    for p in stage.parts:
        if p in have or p == "base":
            continue
        gb, bf16 = sz[kind, p][:2]
        build += gb / DISK_WRITE_GBS + 5 + (2 * bf16 / HOST_DEVICE_GBS if p == "transformer" else 0)
    build += START_S if any(p not in have for p in stage.parts) else 0
    read = sum(sz[kind, p][0] for p in stage.parts if p != "base" and (name != "qwen-encode" or p != "transformer"))
    quantise_at_load = {"flux-infer": sz["flux", "text_encoder_2"][1], "qwen-infer": sz[kind, "text_encoder"][1]}
    load = read / DISK_READ_GBS + quantise_at_load.get(name, 0.0) / HOST_DEVICE_GBS
    lin, layers = sz[kind, "transformer"][3], {"qwen-image-edit": 60, "flux": 57, "vibe": 20}[kind]

    def passes(tokens: float, count: float) -> float:  # seconds of ``count`` transformer forwards
        return count * (2 * lin * tokens + 4 * layers * tokens**2 * 3072) / (TFLOPS * 1e12)

    flux_tokens = {r: (r / 16) ** 2 + 512 for r in (512, 768, 1024)}
    qwen_tokens = {r: (r / 16) ** 2 + 4096 + PROMPT_TOKENS_QWEN for r in (512, 1024)}
    run = {
        "flux-infer": passes(flux_tokens[1024], 30) + 2 * 8,
        "flux-train": sum(passes(flux_tokens[r], 4 * 4) for r in (512, 768, 1024)) + passes(flux_tokens[768], 20) + 10,
        "qwen-encode": sz[kind, "text_encoder"][1] / DISK_READ_GBS + 6 * 3,  # a second load for the samples
        "qwen-infer": passes(qwen_tokens[1024], 1 + 4 + 2 * 5)  # warm-up, Lightning's 4, 5 CFG steps
        + 3 * 10
        + 20
        + (lora_gb(64, None) + 2 * lora_gb(16, QwenEditBackend.default_targets)) / DISK_WRITE_GBS,
        "qwen-train": sum(passes(qwen_tokens[r], 4 * 4) for r in (512, 1024)),
        "qwen-sample": passes(qwen_tokens[512], 2 * 4 + 20) + 10,  # two training steps, then 20 sampling steps
        # DC-AE f32 latents, patch 1: (px/32)² tokens + 224 meta tokens; 3 guidance branches; Sana's attention is
        # linear, so the quadratic term overestimates: an upper bound
        "vibe-infer": sum(passes((r / 32) ** 2 + 224, 3 * 22) for r in (1024, 2048)) + 2 * 10,
    }[name]
    if name == "qwen-infer":
        disk += lora_gb(64, None) + 2 * lora_gb(16, QwenEditBackend.default_targets)
    total = START_S + build + load + run
    return disk, total / 60, f"start {START_S:.0f} s, build {build:.0f} s, load {load:.0f} s, run {run:.0f} s"


def plan() -> str:
    """Each stage's builds, disk, time and command, then the device calls that fill the table."""
    sz = sizes()
    lines = [
        "Each stage builds the components it loads (random weights; the transformers in nf4, the rest in bf16), "
        "measures in a fresh process, appends rows to --out and deletes what it built unless --keep.",
        f"Estimates for the lent H200: disk writes {DISK_WRITE_GBS} GB/s, reads {DISK_READ_GBS} GB/s, host<->GPU "
        f"{HOST_DEVICE_GBS} GB/s, {TFLOPS:g} TFLOP/s effective on transformer passes (2 x Linear params x tokens + "
        f"attention), {START_S:.0f} s per Python process.",
        "",
        "| stage | builds | disk GB | min alone | min in the sequence | measures | command alone |",
        "|---|---|---|---|---|---|---|",
    ]
    have: dict[str | None, set[str]] = {}
    calls = []
    for i, group in enumerate(SEQUENCE, 1):
        later = {STAGES[n].kind for g in SEQUENCE[i:] for n in g}
        minutes = 0.0
        for name in group:
            stage, kind = STAGES[name], STAGES[name].kind
            nf4 = kind in QUANTISED
            parts = ", ".join(
                "base" if p == "base" else f"{p} ({sz[kind, p][0]:.1f} GB {'nf4' if nf4 and p == 'transformer' else 'bf16'})"  # noqa: E501
                for p in stage.parts
            ) if kind else "2 ONNX files (0.2 GB)"  # fmt: skip
            disk, alone, _ = estimate(name, set(), sz)
            _, seq, how = estimate(name, have.get(kind, set()), sz)
            have[kind] = have.get(kind, set()) | set(stage.parts)
            minutes += seq
            cmd = f"python bench/gpu_memory.py --stage {name} --out $OUT/{name}.jsonl"
            lines.append(f"| {name} | {parts} | {disk:.1f} | {alone:.1f} | {seq:.1f} ({how}) | {stage.measures} | "
                         f"`{cmd}` |")  # fmt: skip
        keep = any(STAGES[n].kind in later for n in group if STAGES[n].kind)
        have = {k: v for k, v in have.items() if keep and k in later}
        calls.append((f"python bench/gpu_memory.py --stage {' '.join(group)}{' --keep' if keep else ''} "
                      f"--out $OUT/rows-{i}.jsonl", minutes))  # fmt: skip
    lines += ["", "Device calls (each under 10 minutes; stages of one call share their models, --keep hands them on):"]
    lines += [f"{n}. `{cmd}`  ≈ {m:.1f} min" for n, (cmd, m) in enumerate(calls, 1)]
    lines.append(f"Total ≈ {sum(m for _, m in calls):.1f} min of commands, plus the machine's start and the carried "
                 "wheels' install (docs/benchmarks.md).")  # fmt: skip
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print each stage's builds, disk, time and command")
    parser.add_argument("--stage", nargs="+", choices=list(STAGES), help="stages to run, each in its own processes")
    parser.add_argument("--smoke", action="store_true", help="every stage with the tiny twins on the CPU, the table")
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSONL", help="print the Markdown table of rows")
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--models", type=Path, default=DEFAULT_DIR, help="where models and scratch files go")
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file the rows are appended to")
    parser.add_argument("--keep", action="store_true", help="keep the built models for a later stage")
    parser.add_argument("--steps", type=int, default=None, help="measured steps after one warm-up (3; tiny: 2)")
    parser.add_argument("--build-parts", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (3 if args.size == "real" else 2)
    if args.build_parts:
        kind, *parts = args.build_parts
        build_parts(kind, parts, args.size, args.models / args.size / kind)
    elif args.measure:
        measure(args.measure, args.size, args.models, args.models / "work" / args.measure, args.out, steps)
    elif args.plan:
        print(plan(), end="")
    elif args.table:
        print(table(load_rows(args.table)), end="")
    elif args.smoke:
        models = Path(tempfile.mkdtemp(prefix="flenwheel-gpu-smoke-"))
        out = args.out or DEFAULT_DIR / "smoke.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        try:
            failures = run_stages(list(STAGES), "tiny", models, out, False, args.steps or 2)
        finally:
            shutil.rmtree(models, ignore_errors=True)
        print(table(load_rows([out])), end="")
        sys.exit(1 if failures else 0)
    elif args.stage:
        import torch

        if args.size == "real" and not torch.cuda.is_available():
            sys.exit("bench/gpu_memory.py measures GPU memory: --size real needs CUDA (--smoke runs the tiny twins)")
        out = args.out or DEFAULT_DIR / "results.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        sys.exit(1 if run_stages(args.stage, args.size, args.models, out, args.keep, steps) else 0)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()

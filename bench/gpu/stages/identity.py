"""Identity scoring with insightface-layout ONNX models of random weights, through the production backend."""

from __future__ import annotations

from typing import Any

from bench.gpu.context import Ctx, image
from bench.gpu.meter import now
from bench.gpu.onnx_faces import ARCFACE_KPS, write_detector, write_recognizer


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
        ctx.emit(
            key,
            f"identity scoring, insightface backend ({how.split(':')[0]})",
            1024,
            ctx.meter.stop(),
            s_image=s_image,
            load_s=load_s,
            settings=f"{how}; buffalo_l-shaped ONNX with random weights ({models}); detect on the 640-px "
            "copy + embed one aligned face + compare to 4 references",
        )
        del backend
    if not gpu_provider:
        ctx.emit(
            "identity-gpu",
            "identity scoring on the GPU (ctx_id=0)",
            1024,
            None,
            settings="not run: this onnxruntime has no CUDAExecutionProvider (the pinned onnxruntime is the CPU "
            "build, so production scores faces on the CPU)",
        )

"""The GPU bench: peak memory and seconds of every gpu-24gb stage on real-size models with random weights.

Why random weights: nothing can be downloaded, and memory and time depend on shapes, not on values. The real
FLUX.1-dev, Qwen-Image-Edit-2509 and VIBE architectures (each family twin's ``SIZES["real"]``) are built with random
weights and run through flenwheel's *production* code under the gpu-24gb profile: ``ModelManager.stacked`` (so
``load_pipeline``: nf4, model CPU offload, VAE tiling; the LoRA stack as adapters) for generation and editing, the
trainers' ``prepare_model`` / ``train_step`` / ``sample`` for LoRA steps and checkpoint samples,
``QwenEditBackend.cache`` for the bf16 Qwen2.5-VL caching stage, ``Critic.from_pretrained`` under the profile's VLM
rule beside a resident editor, and ``InsightFaceBackend`` for identity scoring.

Why one process per stage: a lent GPU machine has about 64 GiB of disk and 10 minutes per command. A stage builds
only the components it loads, in the form the profile reads them, and deletes them at the end unless ``--keep``
hands them to the next stage. The transformers are never written in bf16 (41 GB for Qwen's): they are initialised
on the GPU, passed through diffusers' own quantising loader and saved in nf4 (11.5 GB), a pre-quantised folder
that ``load_pipeline`` and the trainer load exactly as they load a quantised hub snapshot. Every measurement runs
in a fresh process, so a row's peak is its own; rows are appended to a JSON-lines file as soon as they are
measured, so a stage stopped at the time limit keeps what it measured.

Modules: :mod:`.common` (stages, constants), :mod:`.meter`, :mod:`.build` (random-weight models),
:mod:`.onnx_faces`, :mod:`.context`, :mod:`.stages` (one module per model family), :mod:`.run` (processes, the
single-command check), :mod:`.table`, :mod:`.plan`. Entry points: ``bench/gpu_memory.py`` and ``bench/gpu_check.sh``.
"""

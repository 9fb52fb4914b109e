"""FLUX.2 [klein] 4B: its family data and tiny twin (the pipeline is diffusers' Flux2KleinPipeline; its trainer
backend: flenwheel.training.flux2_klein)."""

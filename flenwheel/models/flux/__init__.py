"""FLUX.1-dev: its tiny twin (the pipeline is diffusers' FluxPipeline; its trainer backend: flenwheel.training.flux)."""

"""Qwen-Image-Edit-2509: its tiny twin (the pipeline is diffusers' QwenImageEditPlusPipeline; its trainer backend:
flenwheel.training.qwen_edit)."""

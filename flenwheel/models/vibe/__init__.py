"""VIBE (Sana1.5 + Qwen3-VL): its pipeline (not in diffusers) and its tiny twin; its editor: flenwheel.editing.vibe."""

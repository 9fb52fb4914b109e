"""The default configuration (profiles, prompt libraries, LoRA library, example characters).

This folder is the project's configs/ and ships inside the installed package as ``flenwheel.defaults``, so a
wheel install finds its defaults and ``flenwheel init DIR`` can write a starter copy. Nothing here is code.
"""

"""A character's training set: frozen versions (:mod:`.versions`), VLM captions (:mod:`.captions`), synthetic
generation with a trained LoRA (:mod:`.generation`), and what each flywheel iteration holds (:mod:`.iteration`)."""

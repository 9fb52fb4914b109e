"""Models: loading by hub id or folder under a profile (:mod:`.refs`, :mod:`.loading`, :mod:`.loras`), strict
checkpoint keys (:mod:`.weights`), what sits on the GPU (:mod:`.memory`), one resident model per process
(:mod:`.runtime`), the VLM critic (:mod:`.critic`), download sizes (:mod:`.downloads`) and the tiny random-weight
twins (:mod:`.twins`). A folder per model family holds what is that family's own (its twin; VIBE's pipeline).

Nothing is imported here: ``flenwheel.models.runtime`` must stay cheap for processes that never load torch.
"""

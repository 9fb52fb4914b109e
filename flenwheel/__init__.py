"""flenwheel: photos of one character -> curated, versioned training sets and LoRAs, improved in a loop.

The engine (this package's modules) is plain Python: no Prefect or FiftyOne imports. Orchestration lives in
:mod:`flenwheel.flows` and :mod:`flenwheel.tasks`, review in :mod:`flenwheel.review` (the repository's top-level
flows/, tasks/ and review/ folders), layered as docs/architecture.md shows.
"""

import logging

# On a machine without CUDA, bitsandbytes (imported by diffusers' quantizers) warns at import that an optional
# CPU kernel package is missing; no profile runs 4-bit on the CPU, so the warning is noise in every command.
logging.getLogger("bitsandbytes.backends.cpu").setLevel(logging.ERROR)

__version__ = "0.1.0"

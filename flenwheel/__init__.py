"""flenwheel: photos of one character -> curated, versioned training sets and LoRAs, improved in a loop.

The engine (this package's top-level modules) is plain Python: no Prefect or FiftyOne imports.
Orchestration lives in :mod:`flenwheel.tasks` and :mod:`flenwheel.flows`, review in :mod:`flenwheel.review`.
"""

__version__ = "0.1.0"

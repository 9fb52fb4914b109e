"""Prefect tasks: thin, batched wrappers around the engine (many images per task run).

Tasks take plain values (paths, ids, names) and open what they need through :mod:`flenwheel.runtime`; the
catalog, not Prefect's result store, is the record of what was done, so ``cache_policy=NONE`` everywhere.
Each task logs what it did through the ``flenwheel`` loggers, which Prefect sends to the run's logs.
"""

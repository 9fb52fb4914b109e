"""Prefect tasks: thin, batched wrappers around the engine (many images per task run).

Tasks take and return plain values (paths, ids, names) and open what they need themselves; the catalog,
not Prefect's result store, is the record of what was done, so ``cache_policy=NONE`` everywhere.
"""

"""Prefect flows: they orchestrate tasks, read the catalog to skip what is done, and tell their story in the logs.

Importing this package changes nothing: each flow calls :func:`flenwheel.flows.setup.configure` as it starts, and
the CLI sets Prefect's private defaults before Prefect is imported (:mod:`.setup`).
"""

"""Prefect flows: they orchestrate tasks, read the catalog to skip what is done, and tell their story in the logs.

Importing this package sets Prefect defaults that suit a local, private tool (an explicit environment setting
wins): no usage analytics from the server, the UI or the client, and the engine's ``flenwheel`` loggers sent
to the run's logs in the Prefect UI at INFO level.
"""

import logging
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # server telemetry, and the UI's (it asks)
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side analytics
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flenwheel")

import prefect.main  # noqa: F401 - sets up Prefect's logging with the settings above


def _engine_logs_to_runs() -> None:
    """Send ``flenwheel`` log records to the current run's logs (also when Prefect was set up before us)."""
    engine = logging.getLogger("flenwheel")
    if engine.level == logging.NOTSET or engine.level > logging.INFO:
        engine.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in engine.handlers:
            engine.addHandler(handler)


_engine_logs_to_runs()

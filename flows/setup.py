"""Prefect set up for a local, private tool, by the entry points (the CLI, ``flenwheel serve``, each flow as it
starts), never as a side effect of an import.

:func:`private_defaults` (before Prefect is imported: the CLI's ``main``): no usage analytics from the server, the
UI or the client, and the engine's ``flenwheel`` loggers among Prefect's extra loggers; an explicit environment
setting wins. :func:`configure` (every flow's first step): the ``flenwheel`` loggers sent to the run's logs in the
Prefect UI at INFO level, and in the terminal an error the user can act on stays the CLI's one line (Prefect's
traceback of it still goes to the run's logs). Both are idempotent.
"""

from __future__ import annotations

import logging
import os

from flenwheel.core.errors import FlenwheelError

PRIVATE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # server telemetry, and the UI's (it asks)
    "DO_NOT_TRACK": "1",  # Prefect's client-side analytics
    "PREFECT_LOGGING_EXTRA_LOGGERS": "flenwheel",
}


def private_defaults() -> None:
    """Prefect's settings for a private tool, where the environment does not say otherwise."""
    for key, value in PRIVATE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configure() -> None:
    """Send the engine's logs to the run's logs and keep user errors to one line in the terminal."""
    private_defaults()
    import prefect.main  # noqa: F401 - sets up Prefect's logging (once) with the settings above

    _engine_logs_to_runs()
    _quiet_user_errors_in_the_terminal()


def _engine_logs_to_runs() -> None:
    """Send ``flenwheel`` log records to the current run's logs (also when Prefect was set up before us)."""
    engine = logging.getLogger("flenwheel")
    if engine.level == logging.NOTSET or engine.level > logging.INFO:
        engine.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in engine.handlers:
            engine.addHandler(handler)


class _OneLineUserErrors(logging.Filter):
    """Drop terminal records that only repeat a flenwheel error (its traceback, the failed state naming it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FlenwheelError):
            return False
        if record.levelno >= logging.ERROR:
            message = record.getMessage()
            return not any(name in message for name in _user_error_names())
        return True


def _user_error_names() -> set[str]:
    names, todo = set(), [FlenwheelError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def _quiet_user_errors_in_the_terminal() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    # Prefect's logging config puts its console handler on the root logger (3.x) or on "prefect" (older).
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OneLineUserErrors) for f in handler.filters
        ):
            handler.addFilter(_OneLineUserErrors())

"""Prefect flows: they orchestrate tasks, read the catalog to skip what is done, and tell their story in the logs.

Importing this package sets Prefect defaults that suit a local, private tool (an explicit environment setting
wins): no usage analytics from the server, the UI or the client; the engine's ``flenwheel`` loggers sent to the
run's logs in the Prefect UI at INFO level; and in the terminal, an error the user can act on stays the CLI's
one line (Prefect's traceback of it still goes to the run's logs).
"""

import logging
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # server telemetry, and the UI's (it asks)
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side analytics
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flenwheel")

import prefect.main  # noqa: F401 - sets up Prefect's logging with the settings above
from prefect.logging.handlers import PrefectConsoleHandler

from flenwheel.errors import FlenwheelError


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
    # Prefect's logging config puts its console handler on the root logger (3.x) or on "prefect" (older).
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _OneLineUserErrors) for f in handler.filters
        ):
            handler.addFilter(_OneLineUserErrors())


_engine_logs_to_runs()
_quiet_user_errors_in_the_terminal()

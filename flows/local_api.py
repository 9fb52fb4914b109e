"""A Prefect API for a command-line run: the configured server, else a local one that dies with this process.

Prefect starts a temporary ("ephemeral") API server whenever no ``PREFECT_API_URL`` is set. Two things about
it break on a real machine (docs/reliability.md): its first start runs the database migrations, which on a
busy 2-core machine takes longer than Prefect's 20 s start-up budget, and it is a plain child process that a
SIGKILLed parent leaves running. So a flenwheel command that runs a flow without a configured server starts
the same server itself (``prefect.server.api.server:create_app`` under uvicorn, with the environment Prefect
gives its ephemeral server), waits for it with a budget that fits a busy machine, and points this process at
it. The server watches its parent and exits when the parent is gone, however the parent ended.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from flenwheel.core.errors import FlenwheelError
from flenwheel.core.processes import exit_when_orphaned

STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_BUDGET_S = 600.0  # the first start on a busy 2-core machine measured 40-70 s (docs/benchmarks.md)
SLOW_START_NOTICE_S = 5.0


class ApiServerError(FlenwheelError):
    """The local Prefect API could not be started."""


def startup_budget_s() -> float:
    """The user's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` when set, else a budget for busy machines."""
    raw = os.environ.get(STARTUP_ENV)
    if raw:
        try:
            return float(raw)
        except ValueError:
            raise ApiServerError(f"{STARTUP_ENV}={raw!r} is not a number of seconds") from None
    return DEFAULT_STARTUP_BUDGET_S


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SERVER: tuple[subprocess.Popen[bytes], str] | None = None


@contextmanager
def prefect_api(notify: Callable[[str], None] | None = None) -> Iterator[str | None]:
    """Run the block against a Prefect API; yields the URL of a local server it started, else None.

    With ``PREFECT_API_URL`` configured nothing is started (runs then show in that server's UI). Otherwise a
    local server is started once per process and stopped when the process exits (after Prefect's own exit
    hooks have sent their last events to it).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    url = _start(notify)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def _start(notify: Callable[[str], None] | None) -> str:
    global _SERVER
    if _SERVER is not None:
        return _SERVER[1]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        # what Prefect gives its own ephemeral server: no UI, services suited to a temporary server
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flenwheel.flows.local_api", str(port), str(os.getpid())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    atexit.register(_stop)
    _SERVER = (proc, url)
    _wait_healthy(proc, url, startup_budget_s(), notify)
    return url


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, budget: float, notify: Callable[[str], None] | None) -> None:
    started = time.monotonic()
    noticed = False
    with httpx.Client(timeout=5.0) as client:
        while True:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
                raise ApiServerError(
                    f"the local Prefect API server exited with status {proc.returncode}"
                    + (f": {err[-1]}" if err else "")
                )
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            waited = time.monotonic() - started
            if waited > budget:
                _stop()
                raise ApiServerError(
                    f"the local Prefect API server did not answer within {budget:.0f} s; set {STARTUP_ENV} to "
                    "wait longer, or run `prefect server start` and set PREFECT_API_URL"
                )
            if notify and not noticed and waited > SLOW_START_NOTICE_S:
                notify("starting a local Prefect API server (its first start creates the database: up to a minute)")
                noticed = True
            time.sleep(0.2)


def _stop() -> None:
    global _SERVER
    if _SERVER is None:
        return
    proc, _ = _SERVER
    _SERVER = None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(port: int, parent: int) -> None:
    import uvicorn

    exit_when_orphaned(parent)
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))

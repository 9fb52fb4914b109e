"""A real Dask cluster on loopback for tests and bench/cluster.py: ``dask scheduler`` and ``dask worker`` processes
started with the command-line tools a user runs (free ports, one thread and ``GPU=1`` per worker, each with its own
``FLENWHEEL_WORKER_HOME``), killed at the end even when the test fails or this process is SIGKILLed."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL when the parent dies, however it died
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaskLab:
    """A scheduler and named workers; ``start_worker`` adds one, ``kill`` SIGKILLs one, ``close`` ends them all."""

    def __init__(self, base: Path, tiny_models: Path | None = None) -> None:
        self.base, self.tiny_models = base, tiny_models
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = base / "dask-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        port = self.address.rsplit(":", 1)[1]
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"])

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / "dask"), *args], stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent
            )

    def home(self, name: str) -> Path:
        """The worker's FLENWHEEL_WORKER_HOME (tiny twins linked from the session's build when given)."""
        home = self.base / "workers" / name
        if self.tiny_models is not None and not (home / "models" / "tiny").exists():
            (home / "models").mkdir(parents=True, exist_ok=True)
            (home / "models" / "tiny").symlink_to(self.tiny_models)
        home.mkdir(parents=True, exist_ok=True)
        return home

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "FLENWHEEL_WORKER_HOME": str(self.home(name)), **(env or {})}
        args = ["worker", self.address, "--name", name, "--nthreads", "1", "--resources", "GPU=1"]
        self._spawn(name, [*args, "--no-dashboard", "--death-timeout", "60"], full)

    def wait_for(self, n: int, timeout_s: float = 180.0) -> list[str]:
        """Block until ``n`` workers have joined; returns their names."""
        from distributed import Client

        deadline = time.monotonic() + timeout_s
        with Client(self.address, timeout="60s") as client:
            while True:
                names = sorted(str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values())
                if len(names) >= n:
                    return names
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(names)} of {n} Dask workers joined; logs in {self.logs}")
                time.sleep(0.3)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def __enter__(self) -> DaskLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

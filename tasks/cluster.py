"""Cluster mode: the GPU-bound batches of a flow run go to a Dask cluster through Prefect's ``DaskTaskRunner``.

A :class:`Cluster` is opened by the flow for one run (``--cluster ADDRESS``, ``cluster.address`` in
configs/flenwheel.yaml, or the deployment parameter). :meth:`Cluster.run` submits one Prefect task per batch to the
workers and hands each result, as it arrives, to a *record* callback that runs in the flow's process: the flow stays
the single writer of the store and the catalog, so job keys, one transaction per batch and resumability hold as in a
local run (docs/scale.md). Nothing here schedules, queues or talks to workers itself: Dask does.

* **Resources**: each task asks for the configured worker resources (``GPU=1``: one model-holding task per card).
* **Model affinity**: a worker keeps the model its last task loaded (one resident per worker process, as locally);
  the batches of a model go to the workers that hold it (loose restrictions: another worker takes them when those are
  gone), else are spread over all workers.
* **Faults**: Dask runs the tasks of a killed worker again elsewhere (a lost task recorded nothing). A worker that
  cannot load the model fails its task with :class:`WorkerFailed` (one line naming the worker and the reason): the
  batch is submitted again without that worker, and when no worker is left the run stops with those lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dask
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from flenwheel.core.config.settings import ClusterSettings
from flenwheel.core.errors import FlenwheelError

log = logging.getLogger("flenwheel.tasks.cluster")

T = TypeVar("T")
LOCAL = "local"  # the value of --cluster that overrides a configured address


class ClusterError(FlenwheelError):
    """The cluster cannot do the work; the message says why."""


class WorkerFailed(FlenwheelError):
    """A worker could not do a task (no GPU, weights missing): the worker's name and the reason, in one line."""

    def __init__(self, worker: str, reason: str, name: str | None = None) -> None:
        shown = worker if name in (None, worker) else f"{name} ({worker})"
        super().__init__(f"worker {shown}: {reason}")
        self.worker, self.reason, self.name = worker, reason, name or worker

    def __reduce__(self) -> tuple[Any, ...]:  # travels back from the worker in a pickle
        return (WorkerFailed, (self.worker, self.reason, self.name))


@dataclass
class WorkerReport(Generic[T]):
    """A task's result as a worker sends it back: who did it, what it holds now, how long it took."""

    worker: str  # the worker's address
    name: str  # its name (``dask worker --name``)
    value: T
    seconds: float
    bytes_in: int = 0  # payload sizes, for the scheduler's share of the work (docs/scale.md)
    bytes_out: int = 0


@dataclass
class Batch:
    """One unit of work: the task's parameters, what it is called in the log, and the model it needs."""

    params: dict[str, Any]
    label: str
    model: str  # affinity key: batches of one model prefer the workers that hold it
    size: int = 0  # payload bytes sent


@dataclass
class ClusterStats:
    """What the cluster did in this run: batches per worker name, bytes each way, worker seconds."""

    batches: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0


class Cluster:
    """A connection to a Dask cluster for one flow run (a context manager)."""

    def __init__(self, address: str, resources: dict[str, float] | None = None, connect_timeout_s: float = 60.0):
        self.address = address
        self.resources = dict(resources or {})
        self.connect_timeout_s = connect_timeout_s
        self.runner: DaskTaskRunner | None = None
        self.holds: dict[str, str] = {}  # worker address -> the model key it holds
        self.stats = ClusterStats()

    def __enter__(self) -> Cluster:
        runner = DaskTaskRunner(address=self.address, client_kwargs={"timeout": f"{self.connect_timeout_s}s"})
        try:
            runner.__enter__()
            runner.client  # noqa: B018 - connects now, so a wrong address fails here in one line
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {self.address}: {e}") from None
        self.runner = runner
        self._wait_for_workers()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            self.runner.__exit__(*exc)
            self.runner = None
        if self.stats.batches:
            done = ", ".join(f"{name}: {n}" for name, n in sorted(self.stats.batches.items()))
            log.info(
                f"cluster {self.address}: batches per worker {done}; {self.stats.bytes_in / 2**20:.1f} MiB sent, "
                f"{self.stats.bytes_out / 2**20:.1f} MiB back",
                extra={"cluster_stats": self.stats},  # for bench/cluster.py
            )

    def workers(self) -> dict[str, str]:
        """Address -> name of the workers that offer the resources the tasks ask for."""
        assert self.runner is not None
        info = self.runner.client.scheduler_info(n_workers=-1)["workers"]
        return {
            addr: str(w.get("name", addr))
            for addr, w in info.items()
            if all(w.get("resources", {}).get(k, 0) >= v for k, v in self.resources.items())
        }

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        while not self.workers():
            if time.monotonic() > deadline:
                wanted = " ".join(f"--resources {k}={v:g}" for k, v in self.resources.items())
                raise ClusterError(
                    f"no worker of the Dask cluster at {self.address} offers {self.resources or 'any resources'}; "
                    f"start one per GPU with `dask worker {self.address} {wanted}`"
                )
            time.sleep(0.5)
        names = ", ".join(sorted(self.workers().values()))
        log.info(f"cluster {self.address}: workers {names}")

    def run(self, task: Any, batches: Sequence[Batch], record: Callable[[Batch, Any], None]) -> None:
        """Submit every batch, then record each result in this process as it arrives (in arrival order)."""
        assert self.runner is not None
        broken: dict[str, dict[str, str]] = {}  # model key -> worker address -> why it failed
        futures: dict[Any, Batch] = {}
        for i, batch in enumerate(batches):
            futures[self._submit(task, batch, i, broken.get(batch.model, {}))] = batch
        while futures:
            future = next(iter(as_completed(list(futures))))
            batch = futures.pop(future)
            try:
                report: WorkerReport[Any] = future.result()
            except WorkerFailed as e:
                log.warning(f"{batch.label}: {e}")
                failed = broken.setdefault(batch.model, {})
                failed[e.worker] = f"{e.name}: {e.reason}"
                futures[self._submit(task, batch, len(futures), failed)] = batch
                continue
            self.holds[report.worker] = batch.model
            self.stats.batches[report.name] = self.stats.batches.get(report.name, 0) + 1
            self.stats.bytes_in += batch.size
            self.stats.bytes_out += report.bytes_out
            self.stats.seconds += report.seconds
            log.info(f"{batch.label}: done on worker {report.name} ({report.worker}) in {report.seconds:.1f} s")
            record(batch, report.value)

    def _submit(self, task: Any, batch: Batch, index: int, failed: dict[str, str]) -> Any:
        assert self.runner is not None
        workers = self.workers()
        allowed = sorted(a for a in workers if a not in failed)
        if not allowed:
            reasons = "; ".join(f"worker {why}" for _, why in sorted(failed.items()))
            raise ClusterError(f"no worker of {self.address} could run {batch.label}: {reasons}")
        holders = [a for a in allowed if self.holds.get(a) == batch.model]
        pool = holders or allowed
        annotations: dict[str, Any] = {"resources": self.resources} if self.resources else {}
        if failed:  # strict: never the workers that could not load this model
            annotations |= {"workers": allowed}
        else:  # loose: prefer the worker that holds (or will hold) the model; Dask may move it
            annotations |= {"workers": [pool[index % len(pool)]], "allow_other_workers": True}
        with dask.annotate(**annotations):
            return self.runner.submit(task, batch.params)


@contextmanager
def cluster_for(settings: ClusterSettings, address: str | None) -> Iterator[Cluster | None]:
    """The run's cluster: ``address`` (the flow's parameter) over ``cluster.address`` of the settings; None (a local
    run) when neither names one or the parameter says ``local``."""
    chosen = address or settings.address
    if not chosen or chosen == LOCAL:
        yield None
        return
    with Cluster(chosen, settings.resources, settings.connect_timeout_s) as cluster:
        yield cluster

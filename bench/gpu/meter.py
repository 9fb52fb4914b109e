"""Peaks of one measured row: the CUDA allocator's counters, and device-used memory and RSS sampled by a thread."""

from __future__ import annotations

import gc
import threading
import time


def now() -> float:
    return time.perf_counter()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Meter:
    """The peaks of one measured row: the CUDA caching allocator's counters, and the device's used memory and the
    process's RSS, which have no peak counters and are sampled by a thread every 10 ms.

    Device used (total - free, CUDA context included) is what a 24 GB card must hold; reserved is what the caching
    allocator kept; allocated is what tensors needed. The budget check uses the largest of the three.
    """

    def __init__(self) -> None:
        import psutil
        import torch

        self.torch, self.proc = torch, psutil.Process()
        self.cuda = torch.cuda.is_available()
        self.lock = threading.Lock()
        self.used = self.rss = self.used_at_start = 0.0
        threading.Thread(target=self._loop, daemon=True).start()

    def _sample(self) -> None:
        used = 0.0
        if self.cuda:
            free, total = self.torch.cuda.mem_get_info()
            used = (total - free) / 2**30
        rss = self.proc.memory_info().rss / 2**30
        with self.lock:
            self.used, self.rss = max(self.used, used), max(self.rss, rss)

    def _loop(self) -> None:
        while True:
            self._sample()
            time.sleep(0.01)

    def start(self) -> None:
        """Free what the previous row left (gc, the allocator's cache) and start the peaks afresh."""
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        with self.lock:
            self.used = self.rss = 0.0
        self._sample()
        self.used_at_start = self.used

    def stop(self) -> dict[str, float | None]:
        sync()
        self._sample()
        gpu = self.cuda
        return {
            "alloc_gib": self.torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
            "reserved_gib": self.torch.cuda.max_memory_reserved() / 2**30 if gpu else None,
            "used_gib": self.used if gpu else None,
            "used_at_start_gib": self.used_at_start if gpu else None,
            "total_gib": self.torch.cuda.mem_get_info()[1] / 2**30 if gpu else None,
            "rss_gib": self.rss,
        }

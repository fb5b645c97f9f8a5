"""Memory: the bytes a KV cache holds, and the peak memory of a piece of work (CUDA allocator, or the process's
resident set sampled every 2 ms on a CPU)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import torch


def kv_cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a cache holds (allocated buffers for the bounded caches, one window's
    transient keys and values for Recompute)."""
    return cache.kv_bytes()[0]


def kv_resident_bytes(cache) -> int:
    """Bytes of the keys and values of the tokens a cache holds now (a burst-eviction cache's sawtooth; for the
    other bounded caches the allocated slots once full)."""
    return cache.kv_bytes()[1]


def kv_along_stream(config, policies, dtype: torch.dtype, until: int, points: int = 65) -> pd.DataFrame:
    """The analytic KV bytes each policy holds (``policy.kv_bytes_held``, :func:`held_kv_bytes` for a cache of its
    budget) at ``points`` stream lengths from 0 to ``until`` (e.g. the trained length, where measuring Dense token by
    token would take hours): one row per policy and length, with a trace's columns (label, spec, position,
    kv_bytes)."""
    rows = []
    for policy in policies:
        for tokens in np.linspace(0, until, points).round().astype(int):
            rows.append({"label": policy.label(), "spec": policy.spec(), "position": int(tokens),
                         "kv_bytes": policy.kv_bytes_held(config, int(tokens), dtype)})
    return pd.DataFrame(rows)


class RssSampler:
    """The peak resident set size of this process while the ``with`` block runs, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def peak_memory(fn, device: torch.device | str) -> dict[str, int]:
    """Run ``fn()`` and return its peak memory in bytes: CUDA allocated/reserved, or CPU peak RSS."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_allocated": torch.cuda.max_memory_allocated(device),
                "peak_reserved": torch.cuda.max_memory_reserved(device)}
    with RssSampler() as sampler:
        fn()
    return {"peak_rss": sampler.peak}


def memory_now(device: torch.device) -> int:
    """Bytes in use now: CUDA allocated, or the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss

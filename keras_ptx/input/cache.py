"""``data.cache``: whether a split's decoded records are kept in memory after the first pass.

Decoding a record's PNGs costs about as much CPU as augmenting it, so a cached split yields
more augmented images per second (cached against uncached runs: BENCHMARKS.md, "Session 5:
two calls per worker, 4 batches per call"). ``auto`` (the default) caches a
split when its decoded images and masks (``records x S x S x 2`` bytes) take at most
:data:`AUTO_SHARE` of the memory available when the pipeline is built (a container's limit
counts); ``true`` and ``false`` force it either way. A cached split keeps its first pass's
file order (later epochs reshuffle within the shuffle buffer), so for runs that must
repeat exactly, set ``data.cache`` rather than leave it to the machine's free memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from keras_ptx.config import DataConfig
from keras_ptx.data.records_dir import RecordsDir

AUTO_SHARE = 0.25       # train and val cached together stay under half the free memory


@dataclass(frozen=True)
class CachePlan:
    cache: bool
    reason: str         # for the run's log, e.g. "auto: 1.40 GB decoded, 20.1 GB available"


def plan(data: DataConfig, records: RecordsDir, split: str) -> CachePlan:
    """Whether to cache ``split`` of ``records`` (of the fold run ``data.fold``), by ``data.cache``."""
    if isinstance(data.cache, bool):
        return CachePlan(data.cache, f"data.cache={str(data.cache).lower()}")
    need = records.counts(split, data.fold).records * data.image_size ** 2 * 2
    have = available_memory()
    fits = need <= AUTO_SHARE * have
    return CachePlan(fits, f"auto: {need / 1e9:.2f} GB decoded, {have / 1e9:.1f} GB available"
                           f"{'' if fits else f', more than {AUTO_SHARE:.0%} of it'}")


def available_memory() -> int:
    """Bytes this process could still get: the host's MemAvailable (free pages where that is
    unknown), or less when a container's memory limit (cgroup v2 or v1) leaves less."""
    host = _meminfo_available()
    if host is None:
        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None:
            return max(0, min(host, cap - used))
    return host


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo; None where the kernel does not report it."""
    try:
        with open("/proc/meminfo") as f:
            lines = f.readlines()
    except OSError:
        return None
    found = [line.split()[1] for line in lines if line.startswith("MemAvailable:")]
    return int(found[0]) * 1024 if found else None


def _read_int(path: str) -> int | None:
    """The integer in a one-line file; None when missing or 'max' (no limit)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None

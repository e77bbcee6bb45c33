"""Keep the memory a training step frees inside the process, so the next step reuses it.

glibc serves large allocations with fresh ``mmap``s (above 128 KiB, a threshold it raises to at most 32 MiB) and
gives freed memory at the top of its heap back to the kernel. A training step allocates and frees the same large
activations every step (a NICE batch of 1000 holds several 360 MB tensors), so every step page-faults them in again
and the kernel zeroes each page: on the 2-core machine system time was ~40 % of a NICE step's CPU time, and a NICE
step at batch 1000 ran 2× faster with both turned off (docs/performance.md). Without them the heap keeps its pages
and the next step finds them mapped.

The price is memory: the heap keeps its high-water mark between steps, and blocks freed in one order and requested
in another do not always fit each other's holes. NICE at batch 1000 on the CPU peaked at 4.5 GB instead of 2.6 GB
(the step's live tensors) and stayed there; an MCDB run of `make run` (batch 64) peaked at 786 MiB against 754. On a GPU
the activations are not in this heap at all.

Only glibc has these knobs (``mallopt``); elsewhere (macOS, musl) this does nothing. ``BENCH_KEEP_MALLOC_DEFAULTS=1``
leaves glibc's defaults alone (for a process that must return memory, e.g. a long-lived notebook).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Turn off glibc's large-block mmaps and heap trimming for this process (once); True when they are off."""
    global _applied
    if _applied is None:
        _applied = _set_mallopt()
    return _applied


def is_on() -> bool:
    """Whether this process runs on the setting (False before the first :func:`keep_freed_memory`)."""
    return bool(_applied)


def _set_mallopt() -> bool:
    if os.environ.get("BENCH_KEEP_MALLOC_DEFAULTS") == "1" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # glibc reads the -1 as a size_t: a trim threshold no heap reaches
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))

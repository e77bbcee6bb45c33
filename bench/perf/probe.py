"""One timed data load in a fresh process, so its peak RSS is the load's own and not what the parent process holds.

``python -m bench.perf.probe ROOT SUBJECT train|test`` prints one JSON line. The cache location comes from
``BENCH_CACHE_DIR``, which the caller points at a scratch folder: the first probe converts, the next ones read.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss carries the parent's high-water mark over a (v)fork + exec, so
    a probe started from a process holding torch would report the parent's size; VmHWM belongs to the new image."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def probe(root: str, subject: int, part: str) -> dict:
    from bench.data.dataset import ThingsEEG

    before = _peak_rss_mb()
    t0 = time.perf_counter()
    ds = ThingsEEG.open(root)
    t1 = time.perf_counter()
    data = ds.load_train(subject, average=True) if part == "train" else ds.load_test(subject)
    t2 = time.perf_counter()
    return {"part": part, "open_s": t1 - t0, "load_s": t2 - t1, "wall_s": t2 - t0, "peak_rss_mb": _peak_rss_mb(),
            "import_rss_mb": before, "shape": list(data.shape), "dtype": str(data.dtype)}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]), sys.argv[3])))

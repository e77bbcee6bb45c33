"""Where the harness keeps things on disk, each overridable by an environment variable."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Caches (float16 EEG memmaps, generated synthetic datasets, features): ``BENCH_CACHE_DIR`` or ~/.cache/thingsbench."""
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "thingsbench")


def default_results_dir() -> Path:
    """Run records and leaderboards: ``BENCH_RESULTS_DIR`` or ./results."""
    return Path(os.environ.get("BENCH_RESULTS_DIR") or "results")


def env_data_root() -> Path | None:
    value = os.environ.get("BENCH_DATA_ROOT")
    return Path(value) if value else None

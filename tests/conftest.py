"""Test-session setup: offline, quiet Ray, and a private cache so tests never touch ~/.cache/thingsbench."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("BENCH_CACHE_DIR", tempfile.mkdtemp(prefix="bench-test-cache-"))

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = str(Path(sys.executable).with_name("bench"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic THINGS-EEG, written once per test session through the real CLI."""
    root = tmp_path_factory.mktemp("tiny-synth")
    out = subprocess.run([BENCH, "synth", "--out", str(root), "--preset", "tiny", "--seed", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray with 2 CPUs for the whole session; its address lets subprocess CLIs join it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 1024 ** 2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def tune_reports(results_dir: Path, spec_hash: str) -> list[dict]:
    """What the trial of ``spec_hash`` reported to Ray Tune, in order: Tune's own log of its results (the trial's
    ``result.json`` under ``<results_dir>/ray``, a line per report, a restarted trial's appended)."""
    (trial,) = [p for p in (Path(results_dir) / "ray").glob("run-*/*/result.json")
                if json.loads(p.read_text().splitlines()[-1]).get("spec_hash") == spec_hash]
    return [json.loads(line) for line in trial.read_text().splitlines()]

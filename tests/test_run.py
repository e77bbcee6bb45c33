"""`bench run` on a real local Ray (2 CPUs): grids, skipping, failures, kill -9 and resume, DDP (two-node clusters:
tests/test_cluster.py)."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.ray_scheduler import RayOptions
from bench.records import RunStore
from bench.grid import SweepRequest, run_sweep
from conftest import BENCH

pytestmark = pytest.mark.ray

QUICK = ("protocol.val_concepts=4",)

PLUGIN = Path(__file__).with_name("plugin_methods.py")


@pytest.fixture(scope="module")
def plugin():
    from bench.registry import load_plugin

    load_plugin(PLUGIN)
    return PLUGIN


def request(tiny_root, results, method="ridge", **kw):
    return SweepRequest(methods=[method], subjects="1,2", seeds="0,1", data_root=tiny_root, results_dir=results,
                        sets=QUICK, **kw)


def test_grid_writes_four_records_and_rerun_schedules_nothing(ray_session, tiny_root, tmp_path):
    opts = RayOptions(max_concurrent=2)
    first = run_sweep(request(tiny_root, tmp_path), opts, printer=lambda s: None)
    assert first.scheduled == 4 and len(first.records) == 4
    assert all(r.status == "completed" for r in first.records)
    assert {(r.spec.subject, r.spec.seed) for r in first.records} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    again = run_sweep(request(tiny_root, tmp_path), opts, printer=lambda s: None)
    assert again.scheduled == 0 and again.skipped == 4


def test_a_failing_run_leaves_one_failed_and_three_completed(ray_session, tiny_root, tmp_path, plugin):
    result = run_sweep(request(tiny_root, tmp_path, method="ridge-flaky"), RayOptions(), printer=lambda s: None)
    statuses = sorted((r.spec.subject, r.spec.seed, r.status) for r in result.records)
    assert statuses == [(1, 0, "completed"), (1, 1, "completed"), (2, 0, "completed"), (2, 1, "failed")]
    failed = next(r for r in result.records if r.status == "failed")
    assert "deliberate failure on sub-02 seed 1" in failed.error["traceback"]
    retry = run_sweep(request(tiny_root, tmp_path, method="ridge-flaky", retries=1), RayOptions(),
                      printer=lambda s: None)
    assert retry.skipped == 3 and retry.scheduled == 2  # only the failed spec runs, then once more as a retry
    assert sorted(r.status for r in retry.records) == ["completed"] * 3 + ["failed"]


def test_kill_minus_9_then_rerun_completes_only_the_missing(ray_session, tiny_root, tmp_path, plugin):
    cmd = [BENCH, "--plugin", str(plugin), "run", "--method", "ridge-slow", "--subjects", "1,2", "--seeds", "0,1",
           "--data-root", str(tiny_root), "--results-dir", str(tmp_path), "--address", ray_session,
           "--max-concurrent", "1", "--set", QUICK[0], "--set", f"method.slow_marker={tmp_path / 'slow'}"]
    (tmp_path / "slow").touch()  # each run takes 3 s: the kill lands mid-grid
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    store = RunStore(tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and len(store.records()) < 1:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r.spec_hash: store.record_path(r.spec_hash).stat().st_mtime_ns for r in store.records()}
    assert 1 <= len(before) < 4, "the kill should land mid-grid"
    time.sleep(2)  # let Ray reap the dead driver's workers
    (tmp_path / "slow").unlink()  # the same specs, now quick
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    after = store.records()
    assert len(after) == 4 and all(r.status == "completed" for r in after)
    for spec_hash, mtime in before.items():  # nothing completed before the kill was recomputed
        assert store.record_path(spec_hash).stat().st_mtime_ns == mtime
    assert f"{len(before)} of 4 runs already completed" in out.stdout


def test_ddp_trial_through_ray_train_on_cpu(ray_session, tiny_root, tmp_path, plugin):
    """--workers-per-trial 2: the trial drives a Ray Train TorchTrainer (gloo) with Accelerate in each worker."""
    req = SweepRequest(methods=["linear-contrastive"], subjects="1", seeds="0", data_root=tiny_root,
                       results_dir=tmp_path, sets=(*QUICK, "train.epochs=2", "train.batch_size=64"))
    result = run_sweep(req, RayOptions(workers_per_trial=2, cpus_per_trial=0.9), printer=lambda s: None)
    (rec,) = result.records
    assert rec.status == "completed", rec.error
    assert rec.provenance["num_processes"] == 2
    assert rec.metrics["top1"] > rec.metrics["chance_top1"]

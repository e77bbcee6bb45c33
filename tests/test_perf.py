"""`bench perf --preset tiny` end to end, in two commands (data, peak and training; then Ray alone): every section is
there with positive figures (no speed thresholds: those belong to the benchmark, never to timed tests), and requests
that cannot run fail with one clear line."""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import pytest
import torch

from conftest import BENCH


def bench(*args):
    return subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=600)


def positive(section: dict, *keys: str) -> None:
    for key in keys:
        value = section[key]
        assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_tiny_preset_reports_data_peak_and_training(tmp_path):
    out = bench("perf", "--preset", "tiny", "--method", "nice,atm", "--device", "cpu", "--json",
                str(tmp_path / "perf.json"), "--workdir", str(tmp_path / "scratch"), "--skip", "ray")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "perf.json").read_text())

    m = report["machine"]
    assert m["device"] == "cpu" and m["cores"] > 0 and m["torch"] == torch.__version__ and m["torch_threads"] > 0

    data = report["data"]
    for key in ("train_first", "train_averaged", "train_cached", "test_first", "test_cached"):
        positive(data[key], "wall_s", "peak_rss_mb")
    assert data["train_cached"]["shape"] == data["train_averaged"]["shape"] == [120, 63, 250]
    assert data["test_cached"]["shape"] == [40, 63, 250]
    positive(data, "source_gb", "cache_gb")

    positive(report["peak"], "float32", "gemm_n")
    assert [r["method"] for r in report["training"]] == ["nice", "atm"]
    for r in report["training"]:
        assert r["reference_structure"] is True  # both carry a TSConv trunk: the reference runs NICE's modules
        positive(r, "step_gflop", "epoch_ratio")
        positive(r["validation"], "ours", "reference", "rows")
        for loop in ("ours", "reference"):
            positive(r[loop], "samples_per_s", "step_s", "epoch_s", "trained_s", "gflop_per_s", "peak_fraction")
            assert r[loop]["gflop_per_s"] * 1e9 == pytest.approx(
                r[loop]["peak_fraction"] * report["peak"]["float32"])  # fp32 on a CPU: the float32 peak
            assert r[loop]["trained_s"] == pytest.approx(r["epochs"] * r[loop]["epoch_s"])
            assert len(r[loop]["round_samples_per_s"]) == r["rounds"] == 2
            assert r["batch_ms"][loop] > 0
        ours, ref = r["ours"]["round_samples_per_s"], r["reference"]["round_samples_per_s"]
        assert r["round_ratios"] == pytest.approx([o / f for o, f in zip(ours, ref)], rel=0.01)
        assert r["ratio"] == pytest.approx(statistics.median(r["round_ratios"]))  # the documented summary
        positive(r["eval"], "score_s", "test_open_s")
        # the reference again in its own process, on glibc's defaults (this process ran on bench.allocator's)
        assert report["malloc_keeps_freed_memory"] is (platform.libc_ver()[0] == "glibc")
        if report["malloc_keeps_freed_memory"]:
            own = r["reference_own_process"]
            positive(own, "samples_per_s", "validation_s", "epoch_s")
            assert own["kept_freed_memory"] is False
            assert own["step_ratio"] == pytest.approx(r["ours"]["samples_per_s"] / own["samples_per_s"])
            assert own["epoch_ratio"] == pytest.approx(own["epoch_s"] / r["ours"]["epoch_s"])
            assert own["trained_s"] == pytest.approx(r["epochs"] * own["epoch_s"])
    assert "glibc's default allocator" in out.stdout
    nice, atm = report["training"]
    assert nice["epoch_rows"] == 120 and atm["epoch_rows"] == 240  # averaged vs single trials, as each recipe

    for title in ("data: one subject", "peak:", "training step:", "time to a trained model"):
        assert title in out.stdout
    assert "ray" not in report and "ray:" not in out.stdout
    assert not list((tmp_path / "scratch").iterdir())  # its data and cache are removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where there is no GPU")
def test_cuda_without_a_gpu_is_one_line_error():
    out = bench("perf", "--preset", "tiny", "--device", "cuda")
    assert out.returncode == 1 and "CUDA is not available" in out.stderr and "Traceback" not in out.stderr


def test_closed_form_method_is_refused(tmp_path):
    out = bench("perf", "--preset", "tiny", "--method", "ridge", "--skip", "data", "--skip", "ray",
                "--workdir", str(tmp_path))
    assert out.returncode == 1 and "closed form" in out.stderr and "Traceback" not in out.stderr


def test_ray_section_alone_writes_only_its_own_data(tmp_path):
    """With data and training skipped nothing reads the preset's subject, so none is written: the Ray section writes
    its own. Two trials at concurrency 2: the machine's own ideal comes from the runs as plain processes side by
    side, and the CPU budget splits the cores × the grid's wall time between trials, driver, Ray and the rest."""
    out = bench("perf", "--preset", "tiny", "--skip", "data", "--skip", "train", "--ray-trials", "2", "--ray-trial-s",
                "0.3", "--ray-concurrency", "2", "--json", str(tmp_path / "perf.json"), "--workdir", str(tmp_path / "w"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "perf.json").read_text())
    assert "generate_s" not in report and "data" not in report and "training" not in report
    assert out.stdout.count("writing one subject") == 1  # the Ray section's own tiny data only
    ray = report["ray"]
    assert ray["trials"] == ray["concurrency"] == 2
    positive(ray, "serial_s", "ideal_s", "ray_init_s", "ray_grid_s", "trial_s", "epochs_per_trial", "checkpoint_every")
    assert ray["overhead_pct"] == pytest.approx(100 * (ray["ray_wall_s"] - ray["ideal_s"]) / ray["ideal_s"])
    positive(ray, "cpu_driver_s", "serial_train_s", "ray_train_s", "serial_outside_train_s", "grid_outside_train_s")
    assert ray["train_slowdown_pct"] == pytest.approx(100 * (ray["ray_train_s"] / ray["serial_train_s"] - 1))
    per_slot = ray["ray_train_s"] / ray["concurrency"] + ray["grid_outside_train_s"]
    assert per_slot == pytest.approx(ray["ray_grid_s"])  # the breakdown adds up to the grid's wall time
    assert ray["side_by_side_train_s"] > 0 and ray["side_by_side_train_s"] != ray["serial_train_s"]
    side = ray["side_by_side_train_s"] - ray["serial_train_s"]
    assert ray["machine_ideal_s"] == pytest.approx((ray["serial_s"] + side) / 2)
    # the trials' processes (found by the pids their records name) trained most of their time, Ray's own processes
    # are counted apart from them, and the parts add up to the cores × the grid's wall time
    assert ray["cpu_trials_s"] > 0.5 * ray["ray_train_s"] and ray["cpu_ray_processes_s"] > 0
    parts = sum(ray[k] for k in ("cpu_trials_s", "cpu_driver_s", "cpu_ray_processes_s", "cpu_others_s", "cpu_idle_s"))
    assert parts == pytest.approx(ray["cpu_available_s"], rel=0.1)
    assert 0 <= ray["cpu_iowait_s"] <= ray["cpu_idle_s"] + 1.0  # I/O wait is idle time (Linux counts it apart)
    for title in ("ray: 2 runs of", "ray: where the overhead goes", "ray: the grid's CPU-seconds"):
        assert title in out.stdout
    assert "training step:" not in out.stdout
    assert not list((tmp_path / "w").iterdir())  # its data, cache and Ray runs are removed


def test_cpu_budget_counts_a_child_that_ended_before_the_grid_did(monkeypatch):
    """A trial worker that exits mid-grid (a fresh process per trial, a crash) takes its CPU-seconds with it: the
    sampler must have read them while it ran. A child burns ~1.5 s of CPU and is reaped inside the window."""
    from bench.perf import cpu_budget

    monkeypatch.setattr(cpu_budget, "SAMPLE_EVERY_S", 0.2)
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass"
    with cpu_budget.CPUBudget() as cpu:
        child = subprocess.Popen([sys.executable, "-c", burn])
        child.wait()
        time.sleep(0.5)  # the child is reaped and gone before the window closes
    as_trial, as_other = cpu.split({child.pid}), cpu.split(set())
    assert as_trial["cpu_trials_s"] > 1.2 and as_trial["cpu_ray_processes_s"] < 0.3
    assert as_other["cpu_ray_processes_s"] > 1.2 and as_other["cpu_trials_s"] == 0
    assert as_trial["cpu_available_s"] == pytest.approx(cpu.wall_s * os.cpu_count())


def test_training_rows_serve_more_rows_than_one_subject_holds():
    """A GPU's `--steps 20 --rounds 3` asks the reference loop for 64,000 averaged rows of a subject with 16,540
    images: the draw then covers every image once per whole pass, as epochs would, instead of failing."""
    import numpy as np

    from bench.perf.throughput import TrainingRows

    class FiveImages:
        n_train_images = 5
        train_image_concept = np.arange(5)

        def train_features(self):
            return type("F", (), {"image": np.zeros((5, 4), np.float32), "text": None})()

        def load_train(self, subject, average=True):
            eeg = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 3, 4), np.float32)
            return eeg.mean(axis=1) if average else eeg

    rows = TrainingRows(FiveImages(), subject=1)
    few = rows.sample(3, average=True)
    assert len(set(few.row_image.tolist())) == 3  # distinct while the data suffice
    many = rows.sample(12, average=True)
    assert len(many) == 12 and np.bincount(many.row_image, minlength=5).min() >= 2  # two whole passes, then 2 more
    assert np.array_equal(many.eeg[:, 0, 0], many.row_image)  # each row is its image's EEG
    trials = rows.sample(13, average=False)  # 2 repetitions per image: 7 images' rows, cut to 13
    assert len(trials) == 13 and np.array_equal(trials.eeg[:, 0, 0], trials.row_image)

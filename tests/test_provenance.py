"""Run records say what the user ran: the driver's command under Ray, `bench train`'s own, and the CPU threads."""
import os
import shutil
import sys

import pytest
import torch

from bench import native, provenance
from bench.ray_scheduler import RayOptions
from bench.execute import train_one
from bench.grid import SweepRequest, run_sweep

QUICK = ("protocol.val_concepts=4",)


def test_explicit_command_wins_and_the_driver_command_is_scoped(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/bench", "train", "--method", "ridge"])
    assert provenance.collect("cpu", "fp")["command"] == "/venv/bin/bench train --method ridge"
    with provenance.driver_command("bench run --methods nice"):
        assert provenance.collect("cpu", "fp")["command"] == "bench run --methods nice"
        assert provenance.collect("cpu", "fp", command="bench tune")["command"] == "bench tune"
    assert provenance.collect("cpu", "fp")["command"] == "/venv/bin/bench train --method ridge"


def test_bench_train_records_its_own_command_threads_and_no_preprocessing(tiny_root, tmp_path, monkeypatch):
    argv = ["bench", "train", "--method", "ridge", "--subject", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    rec = train_one("ridge", 1, 0, data_root=tiny_root, results_dir=tmp_path, sets=QUICK, progress=False).record
    assert rec.status == "completed"
    prov = rec.provenance
    assert prov["command"] == " ".join(argv)
    assert prov["torch_threads"] == torch.get_num_threads() and prov["cpu_count"] == os.cpu_count()
    # where it ran: the same spec and seed sum in another order on another instruction set (docs/reproducibility.md)
    assert prov["cpu"] == {"model": prov["cpu"]["model"], "capability": torch.backends.cpu.get_cpu_capability(),
                           "native": native.loaded()}
    assert prov["cpu"]["model"] and prov["cpu"]["capability"]
    assert prov["preprocessing"] is None  # the synthetic data root was not made by `bench preprocess`
    assert prov["data"] == {"synthetic": True, "n_test_images": rec.metrics["n_test"]}  # a `bench synth` root


def test_the_data_block_tells_synthetic_from_real_data(tiny_root, tmp_path):
    from bench.data.dataset import ThingsEEG

    synthetic = ThingsEEG.open(tiny_root)
    assert synthetic.is_synthetic
    block = provenance.collect("cpu", "fp", dataset=synthetic)["data"]
    assert block == {"synthetic": True, "n_test_images": synthetic.n_test_images}
    # the same files without the marker `bench synth` writes read as real data
    real = tmp_path / "real"
    shutil.copytree(tiny_root, real, ignore=shutil.ignore_patterns("synthetic.json"))
    assert not ThingsEEG.open(real).is_synthetic
    assert provenance.collect("cpu", "fp", dataset=ThingsEEG.open(real))["data"]["synthetic"] is False
    assert provenance.collect("cpu", "fp")["data"] is None  # no dataset opened (a setup failure): unknown


@pytest.mark.ray
def test_a_ray_trial_records_the_drivers_command_not_the_workers(ray_session, tiny_root, tmp_path, monkeypatch):
    argv = ["/venv/bin/bench", "run", "--methods", "ridge", "--subjects", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    req = SweepRequest(methods=["ridge"], subjects="1", seeds="0", data_root=tiny_root, results_dir=tmp_path,
                       sets=QUICK)
    result = run_sweep(req, RayOptions(cpus_per_trial=1, max_concurrent=1), printer=lambda s: None)
    (rec,) = result.records
    assert rec.status == "completed", rec.error
    assert rec.provenance["command"] == " ".join(argv)
    # the trial ran torch on the one CPU Ray gave it, on a machine of os.cpu_count() cores
    assert rec.provenance["torch_threads"] == 1 and rec.provenance["cpu_count"] == os.cpu_count()

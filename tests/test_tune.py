"""`bench tune` searches on validation only and writes a config `bench run --config` takes."""
from pathlib import Path

import pytest
import yaml

from bench.ray_scheduler import RayOptions
from bench.specs import resolve_config
from bench.hparam_search import TuneError, TuneRequest, load_search_space, run_tune

pytestmark = pytest.mark.ray
PLUGIN = Path(__file__).with_name("plugin_methods.py")
QUICK = ("protocol.val_concepts=4", "train.epochs=3", "train.batch_size=64")


@pytest.fixture(scope="module", autouse=True)
def plugin():
    from bench.registry import load_plugin

    load_plugin(PLUGIN)


def test_two_learning_rates_picked_by_validation_without_test_metrics(ray_session, tiny_root, tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text("train.lr: {grid: [1.0e-6, 0.02]}\n")
    outcome = run_tune(TuneRequest(method="linear-contrastive", search=search, num_samples=1, subjects="1,2",
                                   data_root=tiny_root, results_dir=tmp_path, sets=QUICK), RayOptions(),
                       printer=lambda s: None)
    assert len(outcome.trials) == 2
    best_val = {t["overrides"]["train.lr"]: max(h["val_top1"] for h in t["history"]) for t in outcome.trials}
    assert outcome.best_overrides["train.lr"] == max(best_val, key=best_val.get)
    assert outcome.best_val_top1 == max(best_val.values())
    for trial in outcome.trials:  # everything the scheduler saw: validation numbers, never a test metric
        for row in trial["history"]:
            assert row["test_opened"] is False
            assert not {"top1", "top5", "kway", "n_test"} & set(row)
    chosen = yaml.safe_load(outcome.config_path.read_text())
    assert chosen["train"]["lr"] == outcome.best_overrides["train.lr"]
    cfg = resolve_config("linear-contrastive", config_files=[outcome.config_path])  # what `bench run --config` does
    assert cfg["train"]["lr"] == outcome.best_overrides["train.lr"] and cfg["train"]["epochs"] == 3


def test_asha_stops_weak_trials_early(ray_session, tiny_root, tmp_path):
    """One trial at a time, in grid order: the first sets the bar at ASHA's first rung (epoch 1); a later trial that
    scores below it there must be stopped before the last epoch. FIFO would run every trial for all epochs, so this
    fails if the scheduler silently falls back."""
    search = tmp_path / "search.yaml"
    search.write_text("train.lr: {grid: [1.0e-12, 0.02, 0.05]}\n")  # untrained first: on tiny it validates best
    outcome = run_tune(TuneRequest(method="linear-contrastive", search=search, num_samples=1, scheduler="asha",
                                   subjects="1", data_root=tiny_root, results_dir=tmp_path,
                                   sets=(*QUICK, "train.epochs=6")),
                       RayOptions(max_concurrent=1), printer=lambda s: None)
    by_lr = {t["overrides"]["train.lr"]: t["history"] for t in outcome.trials}
    bar = by_lr[1.0e-12][0]["val_top1"]
    assert len(by_lr[1.0e-12]) == 6
    weaker = [lr for lr in (0.02, 0.05) if by_lr[lr][0]["val_top1"] < bar]
    assert weaker, {lr: h[0]["val_top1"] for lr, h in by_lr.items()}  # the premise: someone is weaker at rung 1
    assert all(len(by_lr[lr]) < 6 for lr in weaker), {lr: len(h) for lr, h in by_lr.items()}


def test_search_space_errors(tmp_path):
    cfg = resolve_config("linear-contrastive")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.lrr: {grid: [1, 2]}\n")
    with pytest.raises(Exception, match=r"unknown config key 'train.lrr'.*train.lr"):
        load_search_space(bad, cfg)
    bad.write_text("train.lr: {normal: [1, 2]}\n")
    with pytest.raises(TuneError, match="must be one of"):
        load_search_space(bad, cfg)
    bad.write_text("train.lr: {uniform: [1]}\n")
    with pytest.raises(TuneError, match=r"\[low, high\]"):
        load_search_space(bad, cfg)

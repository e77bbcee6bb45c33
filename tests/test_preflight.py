"""Bad values are refused before the first epoch: config rules at resolve time, the preflight once the data is open.

Each refusal must come as one line naming the key, within seconds, with no training, no run record and (for
`bench run`) no Ray.
"""
import subprocess
import time

import numpy as np
import pytest

from bench.cli import main
from bench.errors import ConfigError
from bench.data.errors import FeatureFileError
from bench.preflight import check_spec
from bench.specs import make_spec, resolve_config
from conftest import BENCH
from fakes import InMemoryThingsEEG

#: a recipe that would train for many minutes if the refusal came late
LONG_NICE = ("train.epochs=5000", "train.batch_size=8", "train.num_threads=1")


@pytest.fixture(scope="module")
def no_centroid_features(tiny_root, tmp_path_factory):
    """The tiny data's feature file without its test concept centres."""
    with np.load(tiny_root / "features.npz") as npz:
        kept = {k: npz[k] for k in npz.files if k != "test_centroid"}
    path = tmp_path_factory.mktemp("features") / "features.npz"
    np.savez(path, **kept)
    return path


@pytest.fixture
def nothing_trains(monkeypatch):
    """Fail loudly if a run gets as far as executing (building the method, training, writing a record)."""
    import bench.execute

    started = []
    monkeypatch.setattr(bench.execute, "execute_spec", lambda *a, **k: started.append(a) or pytest.fail("a run ran"))
    return started


CASES = [  # (method, --set items, what the one line must say)
    ("ridge", ["train.selection=bset"], "--set train.selection=bset: train.selection must be one of best_val, last; "
                                        "got 'bset'. Did you mean best_val?"),
    ("ridge", ["train.epochs=0"], "--set train.epochs=0: train.epochs must be an integer >= 1; got 0."),
    ("ridge", ["train.epochs=-1"], "train.epochs must be an integer >= 1; got -1."),
    ("ridge", ["train.batch_size=0"], "--set train.batch_size=0: train.batch_size must be an integer >= 1; got 0."),
    ("ridge", ["train.val_every=0"], "--set train.val_every=0: train.val_every must be an integer >= 1; got 0."),
    ("ridge", ["eval.galleries=[centroid]"], "eval.galleries must be a list of distinct names among image, text, "
                                             "centroid that includes image"),
    ("ridge", ["eval.galleries=[image, centroid]", "data.features={features}"],
     "eval.galleries: the centroid gallery needs concept centres (NICE-style) in the test features, but "),
    ("ridge", ["eval.kway=[1000]"], "eval.kway: 1000-way needs k < 40 test images"),
    ("ridge", ["data.test_repetitions=99"], "data.test_repetitions=99: sub-01's test file holds 16 repetitions"),
    ("nice", [*LONG_NICE, "eval.kway=[2, 40]"], "eval.kway: 40-way needs k < 40 test images"),
    ("nice", [*LONG_NICE, "train.warmup_epochs=5000"], "train.warmup_epochs must be smaller than train.epochs"),
]


@pytest.mark.parametrize("method,sets,expected", CASES, ids=[f"{m}:{s[-1]}" for m, s, _ in CASES])
def test_bench_train_refuses_before_training_in_one_line(method, sets, expected, tiny_root, no_centroid_features,
                                                         tmp_path, capsys, nothing_trains):
    args = ["train", "--method", method, "--subject", "1", "--data-root", str(tiny_root),
            "--results-dir", str(tmp_path), "--quiet"]
    for item in sets:
        args += ["--set", item.format(features=no_centroid_features)]
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and elapsed < 10, (exit_.value.code, elapsed)
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not nothing_trains and not list(tmp_path.rglob("*.json")), "a run record was written"


def test_the_bench_train_script_exits_1_with_one_line(tiny_root, tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run([BENCH, "train", "--method", "nice", "--subject", "1", "--data-root", str(tiny_root),
                          "--results-dir", str(tmp_path), "--set", "train.epochs=5000", "--set", "eval.kway=[1000]"],
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0  # includes the interpreter's start-up and imports
    assert out.returncode == 1 and elapsed < 10, (out.returncode, elapsed, out.stderr[-2000:])
    assert out.stderr.strip() == "error: eval.kway: 1000-way needs k < 40 test images; choose values below 40 or auto"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("bad,expected", [("train.selection=bset", "Did you mean best_val?"),
                                          ("eval.kway=[1000]", "1000-way needs k < 40 test images")])
def test_bench_run_refuses_before_ray_starts(bad, expected, tiny_root, tmp_path, capsys, monkeypatch):
    import bench.ray_scheduler
    import bench.grid

    monkeypatch.setattr(bench.ray_scheduler, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(bench.grid, "run_grid", lambda *a, **k: pytest.fail("runs were scheduled"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--method", "ridge,nice", "--subjects", "1,2", "--seeds", "0,1", "--data-root", str(tiny_root),
              "--results-dir", str(tmp_path), "--set", bad])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not list(tmp_path.rglob("*.json"))


# --- the preflight on its own, with the in-memory dataset -----------------------------------------------------------
def spec_for(ds, method="ridge", *sets, subject=1):
    return make_spec(method, resolve_config(method, sets=["protocol.val_concepts=4", *sets]), subject, 0, ds)


def test_a_sound_spec_passes_without_reading_any_data():
    ds = InMemoryThingsEEG()
    check_spec(spec_for(ds, "ridge", "eval.galleries=[image, text]", "eval.kway=[2, 11]",
                        "data.test_repetitions=8"), ds)
    check_spec(spec_for(ds, "atm"), ds)
    assert ds.reads == []  # neither EEG nor features: only shapes and headers


def test_text_is_needed_by_a_text_method_and_by_the_text_gallery():
    ds = InMemoryThingsEEG(with_text=False)
    with pytest.raises(FeatureFileError, match=r"method atm needs text features, but the training partition has only "
                                               r"image"):
        check_spec(spec_for(ds, "atm"), ds)
    with pytest.raises(ConfigError, match=r"eval.galleries: the text gallery needs text features .* holds only image"):
        check_spec(spec_for(ds, "ridge", "eval.galleries=[image, text]"), ds)


def test_kway_and_test_repetitions_against_the_data():
    ds = InMemoryThingsEEG(n_test=12, test_reps=8)
    check_spec(spec_for(ds, "ridge", "eval.kway=auto"), ds)  # auto keeps the ladder below 12: nothing to refuse
    with pytest.raises(ConfigError, match=r"^eval.kway: 12-way needs k < 12 test images"):
        check_spec(spec_for(ds, "ridge", "eval.kway=[2, 12]"), ds)
    with pytest.raises(ConfigError, match=r"^data.test_repetitions=9: sub-02's test file holds 8 repetitions"):
        check_spec(spec_for(ds, "ridge", "data.test_repetitions=9", subject=2), ds)


def test_feature_dimensions_and_rows_must_agree():
    ds = InMemoryThingsEEG(dim=8)
    ds._test_text = np.zeros((12, 6), dtype=np.float32)
    with pytest.raises(FeatureFileError, match=r"\(test\): text features have dimension 6, but the training image "
                                               r"features have 8"):
        check_spec(spec_for(ds), ds)
    ds = InMemoryThingsEEG(dim=8)
    ds._test_image = ds._test_image[:10]
    with pytest.raises(FeatureFileError, match=r"\(test\): 10 image feature rows, but the data has 12 test images"):
        check_spec(spec_for(ds), ds)

"""Synthetic THINGS-EEG: written in the published 250 Hz format, deterministic, checkable, and decodable the way
real data is (averages far better than single trials; concept-level signal in the EEG)."""
import json
import pickle
import time

import numpy as np
import pytest

from bench.cli import main
from bench.data.channels import THINGS_63
from bench.data.dataset import ThingsEEG
from bench.data.features import read_meta
from bench.data.synthetic import (GENERATOR_VERSION, PRESETS, SubjectModel, _blocks, channel_directions, generate,
                                  synthetic_root)


GENERATION_SECONDS = {}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    channel_directions()  # MNE's import is a one-off per process; time the generation itself
    start = time.perf_counter()
    root = generate(tmp_path_factory.mktemp("synth") / "tiny", "tiny", seed=0)
    GENERATION_SECONDS["tiny"] = time.perf_counter() - start
    return root


def test_tiny_layout_matches_the_published_format(tiny_root):
    spec = PRESETS["tiny"]
    assert spec.n_subjects >= 3 and 20 <= spec.n_test_concepts <= 50 and spec.test_reps >= 10
    with open(tiny_root / "Preprocessed_data_250Hz" / "sub-03" / "preprocessed_eeg_test.npy", "rb") as fh:
        published = pickle.load(fh)  # what NICE/ATM do
    assert sorted(published) == ["ch_names", "preprocessed_eeg_data", "times"]
    assert published["preprocessed_eeg_data"].shape == (spec.n_test_concepts, spec.test_reps, 63, 250)
    assert published["ch_names"] == list(THINGS_63)
    assert len(published["times"]) == 300 and published["times"][0] == pytest.approx(-0.2)
    meta = np.load(tiny_root / "image_metadata.npy", allow_pickle=True).item()
    assert len(meta["train_img_files"]) == spec.n_train_concepts * spec.images_per_train_concept
    assert read_meta(tiny_root / "features.npz")["preset"] == "tiny"
    assert json.loads((tiny_root / "synthetic.json").read_text())["seed"] == 0
    ds = ThingsEEG.open(tiny_root)
    assert ds.subjects == [1, 2, 3] and (ds.n_chans, ds.n_times, ds.sfreq) == (63, 250, 250.0)
    assert ds.images_per_train_concept == spec.images_per_train_concept
    assert ds.train_features().text.shape == (spec.n_train_concepts, 1024)
    assert ds.test_features().centroid.shape == (spec.n_test_concepts, 1024)
    assert len(set(ds.train_concepts) | set(ds.test_concepts)) == spec.n_train_concepts + spec.n_test_concepts


def test_generation_is_fast_and_deterministic(tiny_root, tmp_path):
    assert GENERATION_SECONDS["tiny"] < 10, f"tiny took {GENERATION_SECONDS['tiny']:.1f} s (target < 5 s)"
    same = generate(tmp_path / "same", "tiny", seed=0, n_subjects=1)
    other = generate(tmp_path / "other", "tiny", seed=1, n_subjects=1)
    name = "Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy"
    assert (tiny_root / name).read_bytes() == (same / name).read_bytes()
    assert (tiny_root / name).read_bytes() != (other / name).read_bytes()
    assert (tiny_root / "features.npz").read_bytes() == (same / "features.npz").read_bytes()
    assert not (same / "Preprocessed_data_250Hz" / "sub-02").exists()


def test_synth_then_check_from_the_cli(tmp_path, capsys):
    root = tmp_path / "tiny"
    main(["synth", "--out", str(root), "--preset", "tiny", "--seed", "3"])
    main(["data", "check", "--data-root", str(root)])
    out = capsys.readouterr().out
    assert "ok: 3 subject(s) readable and consistent" in out and "sub-03" in out
    with pytest.raises(SystemExit) as exit_info:  # the folder is not empty any more
        main(["synth", "--out", str(root), "--preset", "tiny"])
    assert exit_info.value.code == 1 and "not an empty folder" in capsys.readouterr().err


def _ridge_predict(x_train, y_train, x_test, lam):
    """Closed-form ridge in kernel form (n samples ≪ features): x_test xᵀ (x xᵀ + λI)⁻¹ y."""
    dual = np.linalg.solve(x_train @ x_train.T + lam * np.eye(len(x_train)), y_train)
    return (x_test @ x_train.T) @ dual


def _top1(pred, gallery):
    return float(np.mean(np.argmax(pred @ gallery.T, axis=1) == np.arange(len(gallery))))


def test_ridge_readout_averaged_far_above_chance_single_trials_far_lower(tiny_root):
    ds = ThingsEEG.open(tiny_root)
    train, test = ds.train_features(), ds.test_features()
    dim = train.image.shape[1]
    targets = np.concatenate([train.image, train.text[ds.train_image_concept]], axis=1)
    chance = 1.0 / ds.n_test_images
    averaged, single, text = [], [], []
    for s in ds.subjects:
        x = ds.load_train(s).reshape(ds.n_train_images, -1)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        avg_test = ds.load_test(s).reshape(ds.n_test_images, -1)
        one_rep = ds.load_test(s, n_reps=1).reshape(ds.n_test_images, -1)
        x_test = (np.concatenate([avg_test, one_rep]) - mu) / sd
        pred = _ridge_predict((x - mu) / sd, targets, x_test, 10.0 * len(x))
        n = ds.n_test_images
        averaged.append(_top1(pred[:n, :dim], test.image))
        single.append(_top1(pred[n:, :dim], test.image))
        text.append(_top1(pred[:n, dim:], test.text))
    mean_avg, mean_single, mean_text = np.mean(averaged), np.mean(single), np.mean(text)
    assert mean_avg >= 10 * chance, (averaged, chance)
    assert mean_single <= 0.5 * mean_avg, (single, averaged)
    assert mean_text >= 5 * chance, (text, chance)  # concept-level signal: text targets are decodable too


def test_default_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    ds = ThingsEEG.open(None, synthetic_preset="tiny")
    root = synthetic_root("tiny", 0)
    assert ds.root == root == tmp_path / "cache" / "synthetic" / f"tiny-seed0-v{GENERATOR_VERSION}"
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    again = ThingsEEG.open(None, synthetic_preset="tiny", channels="occipital17")
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp and again.n_chans == 17
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary folder left


def test_full_preset_has_the_published_shapes_and_is_written_in_bounded_blocks():
    full = PRESETS["full"]
    assert (full.n_train_concepts * full.images_per_train_concept, full.train_reps) == (16540, 4)
    assert (full.n_test_concepts, full.test_reps) == (200, 80)
    default = PRESETS["default"]
    assert default.n_subjects == 10 and default.n_train_concepts >= 200

    class ShapeOnlyModel:
        def trials(self, u, z, reps, rng, dtype):
            return np.zeros((len(u), reps, 1, 1), dtype)

    latents = np.zeros((full.n_test_concepts, full.latent_dim))
    blocks = list(_blocks(ShapeOnlyModel(), latents, latents, full.test_reps, [0, 3, 1, 1], "float32"))
    assert sum(len(b) for b in blocks) == full.n_test_concepts
    assert max(b.shape[0] * b.shape[1] for b in blocks) <= 1024  # trials per block: memory stays bounded
    model = SubjectModel(full, 0, 1, channel_directions())
    trials = model.trials(latents[:2], latents[:2], 3, np.random.default_rng(0))
    assert trials.shape == (2, 3, 63, 250) and trials.dtype == np.float32


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_disjoint_train_and_test_concepts(preset):
    from bench.data.synthetic import World

    world = World(PRESETS[preset], seed=0)
    assert len(world.train_names) == PRESETS[preset].n_train_concepts
    assert len(world.test_names) == PRESETS[preset].n_test_concepts
    assert not set(world.train_names) & set(world.test_names)

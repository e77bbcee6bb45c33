"""The float16 cache: converted once, keyed by the source file, atomic, block-wise, and blind to test files."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import bench.data.cache as cache
import bench.data.diskarray as diskarray
from bench.data.cache import cached_eeg, eeg_cache_root, file_fingerprint
from bench.data.channels import THINGS_63
from bench.data.dataset import ThingsEEG
from data_fakes import make_root, write_atm_features


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))


def test_converted_once_then_read_from_cache(tmp_path, monkeypatch):
    fake = make_root(tmp_path / "root", "nice-pickle")
    first = ThingsEEG.open(fake.root).load_train(1)
    entries = list(eeg_cache_root().iterdir())
    assert len(entries) == 1 and (entries[0] / "data.npy").is_file()  # float64 source → float16 copy
    assert np.load(entries[0] / "data.npy", mmap_mode="r").dtype == np.float16

    def no_source_reads(path):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(cache, "read_eeg_file", no_source_reads)
    np.testing.assert_array_equal(ThingsEEG.open(fake.root).load_train(1), first)


def test_a_changed_file_is_reconverted(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    ds = ThingsEEG.open(fake.root)
    before = ds.load_train(1)
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    old_fp = file_fingerprint(path)
    old_ds_fp = ds.fingerprint()
    with open(path, "wb") as fh:
        pickle.dump({"preprocessed_eeg_data": fake.train[1] + 1.0, "ch_names": list(THINGS_63),
                     "times": np.arange(-50, 250) / 250}, fh)
    os.utime(path, ns=(1, 1))  # even an old mtime: the size/prefix/mtime key still changes
    assert file_fingerprint(path) != old_fp
    after = ThingsEEG.open(fake.root).load_train(1)
    np.testing.assert_allclose(after, before + 1.0, atol=4e-3)
    assert ThingsEEG.open(fake.root).fingerprint() != old_ds_fp


def test_dataset_fingerprint_is_stable_and_option_sensitive(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    a, b = ThingsEEG.open(fake.root), ThingsEEG.open(fake.root)
    assert a.fingerprint() == b.fingerprint() and a.fingerprint([1]) != a.fingerprint([2])
    assert ThingsEEG.open(fake.root, channels="occipital17").fingerprint() != a.fingerprint()
    assert ThingsEEG.open(fake.root, tmax=0.5).fingerprint() != a.fingerprint()


def test_float16_sources_are_not_copied(tmp_path):
    fake = make_root(tmp_path / "root", "ubp-pt")
    ds = ThingsEEG.open(fake.root)
    trials = ds.load_train(1, average=False)
    assert isinstance(trials, np.memmap) and Path(trials.filename).resolve() == (fake.eeg_dir / "sub-01" / "train.pt").resolve()
    np.testing.assert_array_equal(trials, fake.train[1])
    entries = list(eeg_cache_root().iterdir())
    assert [sorted(p.name for p in e.iterdir()) for e in entries] == [["meta.json"]]


def test_data_in_volts_is_scaled_into_float16_range(tmp_path):
    path = tmp_path / "preprocessed_eeg_training.npy"
    volts = np.random.default_rng(0).standard_normal((6, 2, 63, 250)) * 1e-5
    with open(path, "wb") as fh:
        pickle.dump({"preprocessed_eeg_data": volts, "ch_names": list(THINGS_63), "times": np.arange(250) / 250}, fh)
    entry = cached_eeg(path)
    assert entry.scale == 2.0**17
    np.testing.assert_allclose(entry.mean(), volts.mean(1), rtol=0, atol=1e-5 * 2e-3)
    np.testing.assert_allclose(entry.trials(), volts, rtol=0, atol=1e-5 * 2e-3)
    assert entry.mean(dtype=np.float16).dtype == np.float32  # volts would underflow float16: kept float32


@pytest.mark.parametrize("threads", ["1", "3"])
def test_block_boundaries(tmp_path, monkeypatch, threads):
    """Averaging block by block gives the same result as averaging everything at once, whatever the block size and
    however many threads share the blocks (3 threads, 3 blocks: each its own buffers, written to its own rows)."""
    fake = make_root(tmp_path / "root", "nice-pickle")
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setattr(diskarray, "BLOCK_BYTES", 5 * 4 * 63 * 250 * 2)  # five images per block: blocks of 5, 5, 2
    monkeypatch.setattr(cache, "AVERAGE_BLOCK_BYTES", 5 * 4 * 63 * 250 * 2)
    cache.MEANS.clear()
    entry = cached_eeg(fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy")
    assert [b for b in entry.array.row_blocks()] == [(0, 5), (5, 10), (10, 12)]
    channels, samples = np.array([62, 0, 30]), slice(3, 200)
    np.testing.assert_allclose(entry.mean(channels, samples, n_reps=3),
                               fake.train[1][:, :3][:, :, channels][..., samples].mean(1), atol=2e-3)
    np.testing.assert_allclose(entry.trials(channels, samples), fake.train[1][:, :, channels][..., samples],
                               atol=2e-3)
    # float16 until the batch: the same float32 block means, each rounded once, bit for bit as before (issue 21)
    half = entry.mean(channels, samples, n_reps=3, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, entry.mean(channels, samples, n_reps=3).astype(np.float16))


def _stored_means(path):
    return sorted((eeg_cache_root() / file_fingerprint(path) / "means").glob("*.npy"))


def test_a_mean_is_stored_once_and_read_by_the_next_process(tmp_path, monkeypatch):
    """The next process (this one, its in-memory means dropped) reads the stored average instead of averaging; another
    selection of the same file is averaged and stored apart, never served the first one's array."""
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    first = ThingsEEG.open(fake.root).load_train(1)
    assert len(_stored_means(path)) == 1
    cache.MEANS.clear()

    def no_averaging(*_):
        raise AssertionError("averaged again")

    with monkeypatch.context() as m:
        m.setattr(cache.CachedEEG, "_average", no_averaging)
        again = ThingsEEG.open(fake.root).load_train(1)
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float16 and not again.flags.writeable
    narrow = ThingsEEG.open(fake.root, channels="occipital17", tmax=0.5)
    occipital = narrow.load_train(1)
    assert len(_stored_means(path)) == 2 and occipital.shape[1] == 17 and occipital.shape[2] < first.shape[2]
    channels, samples = narrow._selection(cached_eeg(path).header)
    np.testing.assert_allclose(occipital, fake.train[1][:, :, channels][..., samples].mean(1), atol=2e-3)


@pytest.mark.parametrize("damage", ["truncated", "another shape", "not numpy"])
def test_a_damaged_stored_mean_is_averaged_again(tmp_path, damage):
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    first = ThingsEEG.open(fake.root).load_train(1).copy()
    stored, = _stored_means(path)
    if damage == "truncated":
        stored.write_bytes(stored.read_bytes()[:-100])
    elif damage == "another shape":
        np.save(stored, np.zeros((3, 63, 250), np.float16))
    else:
        stored.write_bytes(b"garbage")
    cache.MEANS.clear()
    np.testing.assert_array_equal(ThingsEEG.open(fake.root).load_train(1), first)
    assert np.load(stored).shape == first.shape  # stored anew


def test_a_change_of_the_averaging_code_is_not_served_an_old_mean(tmp_path, monkeypatch):
    """A stored mean belongs to the module source that averaged it: edited code averages (and stores) anew."""
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    ThingsEEG.open(fake.root).load_train(1)
    cache.MEANS.clear()
    monkeypatch.setattr(cache, "_module_source", lambda: b"edited averaging code")
    calls = []
    real = cache.CachedEEG._average
    monkeypatch.setattr(cache.CachedEEG, "_average", lambda *a: calls.append(1) or real(*a))
    ThingsEEG.open(fake.root).load_train(1)
    assert calls and len(_stored_means(path)) == 2


def test_an_unwritable_cache_costs_a_warning_not_the_load(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    entry = cached_eeg(path)
    means = eeg_cache_root() / file_fingerprint(path) / "means"
    means.write_text("a file where the folder should be")
    with pytest.warns(UserWarning, match="could not store the averaged EEG"):
        mean = entry.mean(dtype=np.float16)
    np.testing.assert_allclose(mean, fake.train[1].mean(1), atol=2e-3)


def test_a_killed_store_leaves_no_mean_behind(tmp_path, monkeypatch):
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"

    def killed(fh, array, **_):
        fh.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ThingsEEG.open(fake.root).load_train(1)
    assert list((eeg_cache_root() / file_fingerprint(path) / "means").iterdir()) == []


def test_a_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    fake = make_root(tmp_path / "root", "nice-pickle")
    real = cache._validate_blocks

    def crash_midway(eeg, scale, write):
        if write is not None:
            write(np.zeros((1, 4, 63, 250), np.float16))
        raise KeyboardInterrupt  # a killed run

    monkeypatch.setattr(cache, "_validate_blocks", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        cached_eeg(fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy")
    assert list(eeg_cache_root().iterdir()) == []
    monkeypatch.setattr(cache, "_validate_blocks", real)
    assert cached_eeg(fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy").shape == (12, 4, 63, 250)


def test_training_calls_never_read_test_files(tmp_path):
    """The leak barrier: with every test file unreadable, the training side still loads."""
    fake = make_root(tmp_path / "root", "nice-pickle")
    (fake.root / "features.npz").unlink()
    write_atm_features(fake.root, 0)
    for s in (1, 2):
        (fake.eeg_dir / f"sub-{s:02d}" / "preprocessed_eeg_test.npy").write_bytes(b"not an EEG file")
    (fake.root / "ViT-H-14_features_test.pt").write_bytes(b"not a feature file")
    ds = ThingsEEG.open(fake.root)
    assert ds.load_train(1).shape == (12, 63, 250) and ds.load_train(2, average=False).shape == (12, 4, 63, 250)
    assert ds.train_features().image.shape == (12, 32)
    with pytest.raises(Exception, match="preprocessed_eeg_test.npy"):
        ds.load_test(1)
    with pytest.raises(Exception, match="ViT-H-14_features_test.pt"):
        ds.test_features()

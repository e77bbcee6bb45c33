"""Round trips for the three published formats, written by the tests in the exact published layouts."""
import pickle
import zipfile

import numpy as np
import pytest

from bench.data.dataset import ThingsEEG
from bench.data.errors import UnsafePickleError
from bench.data.formats import read_eeg_file, read_image_metadata, sniff_format
from data_fakes import (IMAGES_PER_CONCEPT, TEST_CONCEPTS, TEST_REPS, TRAIN_CONCEPTS, TRAIN_REPS, make_root,
                        write_nice)

F16_TOL = 2e-3  # float16 keeps ~3 significant digits of unit-scale data


@pytest.mark.parametrize("fmt, eeg_subfolder, concepts", [
    ("osf-npy", "preprocessed_data", "metadata"),      # official OSF zip layout
    ("nice-pickle", "Preprocessed_data_250Hz", "folders"),  # ATM README layout
    ("nice-pickle", "", "metadata"),                   # NICE README: --data-root is the 250 Hz folder itself
    ("ubp-pt", "Preprocessed_data_250Hz_whiten", "folders"),  # UBP
])
def test_round_trip(tmp_path, fmt, eeg_subfolder, concepts):
    fake = make_root(tmp_path / "root", fmt, eeg_subfolder=eeg_subfolder, concepts=concepts)
    channels = "occipital17" if fmt == "osf-npy" else "all63"
    ds = ThingsEEG.open(fake.root, channels=channels)
    assert ds.subjects == [1, 2]
    assert read_eeg_file(fake.eeg_dir / "sub-01" / ds.layout.subject(1).train.name).format == fmt
    assert ds.ch_names == fake.ch_names and ds.n_chans == len(fake.ch_names)
    expected_sfreq = 100.0 if fmt == "osf-npy" else 250.0
    assert ds.sfreq == expected_sfreq
    # window [0, 1) s: the official files start at −0.2 s, so their first 20 samples are dropped
    np.testing.assert_allclose(ds.times, fake.times[fake.times >= -1e-9])
    assert ds.train_concepts == TRAIN_CONCEPTS and ds.test_concepts == TEST_CONCEPTS
    assert ds.images_per_train_concept == IMAGES_PER_CONCEPT
    assert ds.train_image_concept.tolist() == [i // IMAGES_PER_CONCEPT for i in range(len(TRAIN_CONCEPTS) * 3)]
    keep = slice(len(fake.times) - ds.n_times, None)
    for s in (1, 2):
        train = ds.load_train(s)
        assert train.dtype == np.float16 and train.shape == (12, ds.n_chans, ds.n_times)  # float16 until the batch
        np.testing.assert_allclose(train, fake.train[s][..., keep].astype(np.float64).mean(1), atol=F16_TOL,
                                   rtol=1e-3)
        trials = ds.load_train(s, average=False)
        assert trials.dtype == np.float16 and trials.shape == (12, TRAIN_REPS, ds.n_chans, ds.n_times)
        np.testing.assert_allclose(trials, fake.train[s][..., keep], atol=F16_TOL, rtol=1e-3)
        test = ds.load_test(s)
        assert test.dtype == np.float32 and test.shape == (len(TEST_CONCEPTS), ds.n_chans, ds.n_times)
        np.testing.assert_allclose(test, fake.test[s][..., keep].astype(np.float64).mean(1), atol=F16_TOL)
        np.testing.assert_allclose(ds.load_test(s, n_reps=2), fake.test[s][:, :2, ..., keep].mean(1), atol=F16_TOL)
    assert ds.test_repetitions(1) == TEST_REPS


def test_channel_and_time_selection(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    ds = ThingsEEG.open(fake.root, channels=["Oz", "Fp1", "O2"], tmin=0.1, tmax=0.5)
    idx = [fake.ch_names.index(c) for c in ("Oz", "Fp1", "O2")]
    assert ds.ch_names == ["Oz", "Fp1", "O2"]
    assert ds.times[0] == pytest.approx(0.1) and ds.times[-1] == pytest.approx(0.496) and ds.n_times == 100
    expected = fake.train[1][:, :, idx][..., 25:125].mean(1)
    np.testing.assert_allclose(ds.load_train(1), expected, atol=F16_TOL)
    np.testing.assert_allclose(ds.load_train(1, average=False), fake.train[1][:, :, idx][..., 25:125], atol=F16_TOL)
    occ = ThingsEEG.open(fake.root, channels="occipital17")
    assert occ.n_chans == 17 and occ.ch_names[0] == "P7" and occ.ch_names[-1] == "O2"


def test_prompts_and_image_list(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle", concepts="metadata")
    ds = ThingsEEG.open(fake.root)
    assert ds.train_prompts()[1] == "This picture is aircraft_carrier"
    spaced = ThingsEEG.open(fake.root, prompt_template="a photo of a {concept}.", underscores_to_spaces=True)
    assert spaced.train_prompts()[1] == "a photo of a aircraft carrier." and len(spaced.test_prompts()) == 3
    images = read_image_metadata(fake.root / "image_set" / "image_metadata.npy")
    assert images.train_images[0] == "00001_aardvark/aardvark_01b.jpg"


def test_published_pickles_still_load_with_the_standard_tools(tmp_path):
    """Our fakes are the published formats: numpy and pickle read them as the reference repositories do."""
    fake = make_root(tmp_path / "root", "nice-pickle", subjects=(1,))
    with open(fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy", "rb") as fh:
        assert pickle.load(fh)["preprocessed_eeg_data"].shape == (12, 4, 63, 250)
    official = make_root(tmp_path / "off", "osf-npy", subjects=(1,), eeg_subfolder="preprocessed_data")
    path = official.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    assert np.load(path, allow_pickle=True).item()["preprocessed_eeg_data"].shape == (12, 4, 17, 100)
    assert sniff_format(path) == "osf-npy"


def test_large_arrays_stay_on_disk(tmp_path):
    """Reading a file's structure does not read its EEG array (the 8 GB files must open instantly)."""
    train, _, _ = write_nice(tmp_path / "sub-01", np.random.default_rng(0))
    eeg = read_eeg_file(tmp_path / "sub-01" / "preprocessed_eeg_training.npy")
    assert type(eeg.data).__name__ == "DiskArray" and eeg.data.dtype == np.float64
    np.testing.assert_array_equal(eeg.data.read_rows(3, 5), train[3:5])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["pickle", "np.save", "torch.save", "image_metadata"])
def test_hostile_pickle_is_refused_before_it_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"preprocessed_eeg_data": np.zeros((2, 1, 63, 250)), "ch_names": ["Fp1"], "times": np.zeros(250),
               "extra": _RunsCode(marker)}
    if container == "pickle":
        path = tmp_path / "preprocessed_eeg_training.npy"
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
        call = lambda: read_eeg_file(path)  # noqa: E731
    elif container == "np.save":
        path = tmp_path / "preprocessed_eeg_training.npy"
        np.save(path, payload)
        call = lambda: read_eeg_file(path)  # noqa: E731
    elif container == "torch.save":
        import torch

        path = tmp_path / "train.pt"
        torch.save({"eeg": np.zeros((2, 1, 63, 250), np.float16), "hook": _RunsCode(marker)}, path,
                   pickle_protocol=5)
        assert zipfile.is_zipfile(path)
        call = lambda: read_eeg_file(path)  # noqa: E731
    else:
        path = tmp_path / "image_metadata.npy"
        np.save(path, {"train_img_concepts": _RunsCode(marker)})
        call = lambda: read_image_metadata(path)  # noqa: E731
    with pytest.raises(UnsafePickleError, match=r"refused.*posix\.system|refused.*os\.system|global"):
        call()
    assert not marker.exists()

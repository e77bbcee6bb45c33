"""Bad inputs give a clear error that names the file, and leave no cache entry or temporary file behind."""
import pickle
import re

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.data.cache import eeg_cache_root
from bench.data.channels import THINGS_63
from bench.data.dataset import ThingsEEG
from bench.data.errors import (DataFormatError, DataRootError, FeatureFileError, NonFiniteDataError,
                               UnsafePickleError)
from bench.data.features import FeatureSet, PartitionFeatures, save_feature_set
from data_fakes import make_root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    yield
    root = eeg_cache_root()
    leftovers = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert leftovers == [] or _all_complete(root), f"cache left behind: {leftovers}"


def _all_complete(root):
    """Entries of files that were read successfully are fine; partial entries or temporaries are not."""
    return all((p / "meta.json").is_file() and not p.name.startswith(".") for p in root.iterdir())


def _nice_dict(data, ch_names=THINGS_63, times=None):
    return {"preprocessed_eeg_data": data, "ch_names": list(ch_names),
            "times": np.arange(-50, 250) / 250 if times is None else times}


def _rewrite_train(fake, payload):
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    return path


def _no_cache():
    root = eeg_cache_root()
    return not root.exists() or not any(root.iterdir())


def test_truncated_files(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    path = fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])  # inside the EEG array
    with pytest.raises(DataFormatError, match=r"preprocessed_eeg_training\.npy: truncated"):
        ThingsEEG.open(fake.root)
    path.write_bytes(full[:60])  # inside the pickle's header
    with pytest.raises(DataFormatError, match=r"preprocessed_eeg_training\.npy: truncated or corrupt pickle"):
        ThingsEEG.open(fake.root)
    assert _no_cache()

    ubp = make_root(tmp_path / "ubp", "ubp-pt")
    test_pt = ubp.eeg_dir / "sub-02" / "test.pt"
    test_pt.write_bytes(test_pt.read_bytes()[:5000])
    ds = ThingsEEG.open(ubp.root)
    with pytest.raises(DataFormatError, match=r"test\.pt: truncated or corrupt zip"):
        ds.load_test(2)

    official = make_root(tmp_path / "off", "osf-npy", eeg_subfolder="preprocessed_data")
    npy = official.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy"
    npy.write_bytes(npy.read_bytes()[:300000])
    with pytest.raises(DataFormatError, match=r"preprocessed_eeg_training\.npy: truncated"):
        ThingsEEG.open(official.root, channels="occipital17")


def test_empty_file_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataRootError, match=r"empty: no subject folders with EEG files"):
        ThingsEEG.open(tmp_path / "empty")
    with pytest.raises(DataRootError, match="does not exist"):
        ThingsEEG.open(tmp_path / "absent")
    fake = make_root(tmp_path / "root", "nice-pickle")
    (fake.eeg_dir / "sub-01" / "preprocessed_eeg_training.npy").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"training\.npy: the file is empty \(0 bytes\)"):
        ThingsEEG.open(fake.root)


def test_nan_and_inf_are_refused_and_counted(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    bad = fake.train[1].copy()
    bad[5, 2, 10, 100] = np.nan
    bad[7, 0, 0, 0] = np.inf
    _rewrite_train(fake, _nice_dict(bad))
    ds = ThingsEEG.open(fake.root)  # the header is fine; the values are checked when the array is read
    with pytest.raises(NonFiniteDataError, match=r"training\.npy: 2 NaN/Inf value\(s\).*image row 5") as info:
        ds.load_train(1)
    assert info.value.count == 2
    assert _no_cache()
    assert ds.load_train(2).shape == (12, 63, 250)  # other subjects still load


def test_wrong_shapes(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    _rewrite_train(fake, _nice_dict(np.zeros((12, 63, 250))))
    with pytest.raises(DataFormatError, match=r"has shape \(12, 63, 250\); expected 4-D \(images, repetitions"):
        ThingsEEG.open(fake.root)
    _rewrite_train(fake, _nice_dict(np.zeros((15, 4, 63, 250))))
    with pytest.raises(DataFormatError, match=r"training\.npy: 15 training images, but .*image_metadata\.npy lists 12"):
        ThingsEEG.open(fake.root)
    _rewrite_train(fake, _nice_dict(np.zeros((12, 4, 63, 250)), times=np.arange(200) / 250))
    with pytest.raises(DataFormatError, match="times has 200 entries for 250 samples"):
        ThingsEEG.open(fake.root)
    assert _no_cache()


def test_wrong_or_missing_channel_names(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    data = fake.train[1]
    _rewrite_train(fake, {"preprocessed_eeg_data": data, "times": np.arange(-50, 250) / 250})
    with pytest.raises(DataFormatError, match=r"missing key\(s\) ch_names"):
        ThingsEEG.open(fake.root)
    _rewrite_train(fake, _nice_dict(data, ch_names=[f"EEG{i:03d}" for i in range(63)]))
    with pytest.raises(DataFormatError, match=r"'EEG000'.*not THINGS-EEG channel names"):
        ThingsEEG.open(fake.root)
    _rewrite_train(fake, _nice_dict(data, ch_names=THINGS_63[:62]))
    with pytest.raises(DataFormatError, match="ch_names lists 62 channels but the data has 63"):
        ThingsEEG.open(fake.root)
    official = make_root(tmp_path / "off", "osf-npy", eeg_subfolder="preprocessed_data")
    with pytest.raises(DataFormatError, match=r"has 17 channels and lacks Fp1.*occipital17"):
        ThingsEEG.open(official.root, channels="all63")
    with pytest.raises(ConfigError, match="Did you mean: occipital17"):
        ThingsEEG.open(official.root, channels="occipital")
    assert _no_cache()


def test_missing_subject_and_missing_partition(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    ds = ThingsEEG.open(fake.root)
    with pytest.raises(DataRootError, match=r"subject 7 not found in .*Preprocessed_data_250Hz \(subjects found: 1, 2\)"):
        ds.load_train(7)
    (fake.eeg_dir / "sub-02" / "preprocessed_eeg_test.npy").unlink()
    with pytest.raises(DataRootError, match=r"sub-02: no test file \(expected one of: preprocessed_eeg_test\.npy"):
        ThingsEEG.open(fake.root)
    with pytest.raises(ConfigError, match="has 6 test repetitions; choose 1..6"):
        ThingsEEG.open(make_root(tmp_path / "r2", "nice-pickle").root).load_test(1, n_reps=7)


def test_feature_and_eeg_count_mismatch(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    rng = np.random.default_rng(0)
    save_feature_set(fake.root / "features.npz", FeatureSet(
        train=PartitionFeatures(image=rng.standard_normal((11, 8)), text=rng.standard_normal((4, 8))),
        test=PartitionFeatures(image=rng.standard_normal((3, 8)), text=rng.standard_normal((2, 8)))))
    ds = ThingsEEG.open(fake.root)
    with pytest.raises(FeatureFileError, match=r"features\.npz \(train\): 11 image feature rows, but the EEG has 12"):
        ds.train_features()
    with pytest.raises(FeatureFileError, match=r"\(test\): 2 text feature rows, but there are 3 test concepts"):
        ds.test_features()
    (fake.root / "features.npz").unlink()
    bare = ThingsEEG.open(fake.root)
    with pytest.raises(FeatureFileError, match="no feature file found"):
        bare.train_features()


def test_hostile_pickle_leaves_no_cache(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import subprocess

            return subprocess.call, (["touch", str(marker)],)

    _rewrite_train(fake, dict(_nice_dict(fake.train[1]), note=Evil()))
    with pytest.raises(UnsafePickleError, match=r"training\.npy: refused to unpickle: .*subprocess\.call"):
        ThingsEEG.open(fake.root)
    assert not marker.exists() and _no_cache()


def test_bad_options(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    with pytest.raises(ConfigError, match="selects no sample"):
        ThingsEEG.open(fake.root, tmin=2.0, tmax=3.0)
    with pytest.raises(ConfigError, match="must be smaller"):
        ThingsEEG.open(fake.root, tmin=0.5, tmax=0.5)
    with pytest.raises(ConfigError, match="prompt_template"):
        ThingsEEG.open(fake.root, prompt_template="This is {name}")


def test_data_check_reports_each_problem_and_exits_1(tmp_path, capsys):
    from bench.cli import main

    fake = make_root(tmp_path / "root", "nice-pickle")
    main(["data", "check", "--data-root", str(fake.root)])
    assert "ok: 2 subject(s) readable and consistent" in capsys.readouterr().out

    bad = fake.train[1].copy()
    bad[0, 0, 0, :3] = np.nan
    _rewrite_train(fake, _nice_dict(bad))
    rng = np.random.default_rng(1)
    save_feature_set(fake.root / "features.npz", FeatureSet(
        train=PartitionFeatures(image=rng.standard_normal((10, 4))),
        test=PartitionFeatures(image=rng.standard_normal((3, 4)))))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--data-root", str(fake.root)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1
    assert "sub-01:" in err and "3 NaN/Inf value(s)" in err
    assert "10 train image feature rows, but the EEG has 12 train images" in err

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--data-root", str(tmp_path / "empty")])
    assert exit_info.value.code == 1 and "no subject folders" in capsys.readouterr().err


def _make_test_concept_a_training_concept(fake, concepts):
    """Turn test concept 00002_backscratcher into 00002_zebra: 'zebra' is training concept 00004_zebra."""
    folder = fake.root / "image_set"
    if concepts == "metadata":
        meta = np.load(folder / "image_metadata.npy", allow_pickle=True).item()
        for key in ("test_img_concepts", "test_img_concepts_THINGS"):
            meta[key] = [c.replace("backscratcher", "zebra") for c in meta[key]]
        np.save(folder / "image_metadata.npy", meta)
        return folder / "image_metadata.npy"
    (folder / "test_images" / "00002_backscratcher").rename(folder / "test_images" / "00002_zebra")
    return folder


@pytest.mark.parametrize("concepts", ["metadata", "folders"])
def test_test_concepts_overlapping_training_concepts_are_refused(tmp_path, capsys, concepts):
    from bench.cli import main

    fake = make_root(tmp_path / "root", "nice-pickle", concepts=concepts)
    ThingsEEG.open(fake.root)  # the fake's concepts are disjoint, as THINGS-EEG's are
    source = _make_test_concept_a_training_concept(fake, concepts)
    message = "1 of 3 test concepts are also training concepts (zebra); expected disjoint concepts"
    with pytest.raises(DataFormatError, match=rf"^{source}: {re.escape(message)}"):
        ThingsEEG.open(fake.root)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--data-root", str(fake.root)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1 and f"{source}: {message}" in err


def test_overlap_message_names_the_count_and_the_first_few():
    from bench.data.concepts import refuse_overlapping_concepts

    train = [f"c{i}" for i in range(20)]
    with pytest.raises(DataFormatError, match=r"^list\.npy: 8 of 9 test concepts are also training concepts "
                                              r"\(c0, c1, c2, c3, c4 \.\.\.\)"):
        refuse_overlapping_concepts(train, [*train[:8], "new"], "list.npy")
    refuse_overlapping_concepts(train, ["new", "other"], "list.npy")  # disjoint: fine

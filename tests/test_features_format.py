"""The feature-file format: round trip, partition isolation, clear errors, atomic writes."""
import numpy as np
import pytest

from bench.data.features import (FeatureFileError, FeatureSet, PartitionFeatures, l2_normalize, load_feature_set,
                                 load_partition, read_meta, save_feature_set)


def make_set(rng, dim=8):
    return FeatureSet(
        train=PartitionFeatures(image=l2_normalize(rng.normal(size=(20, dim))), text=l2_normalize(rng.normal(size=(2, dim)))),
        test=PartitionFeatures(image=l2_normalize(rng.normal(size=(5, dim))), text=l2_normalize(rng.normal(size=(5, dim))),
                               centroid=rng.normal(size=(5, dim))),
        meta={"model": "toy", "weights": "random-init"},
    )


def test_round_trip_and_meta(tmp_path):
    fs = make_set(np.random.default_rng(0))
    path = save_feature_set(tmp_path / "f.npz", fs)
    back = load_feature_set(path)
    np.testing.assert_allclose(back.train.image, fs.train.image, rtol=1e-6)
    np.testing.assert_allclose(back.test.centroid, fs.test.centroid, rtol=1e-6)
    assert back.train.centroid is None
    assert read_meta(path)["model"] == "toy" and read_meta(path)["format"] == "thingsbench-features"
    half = save_feature_set(tmp_path / "h.npz", fs, dtype="float16")
    assert np.load(half)["train_image"].dtype == np.float16
    assert load_partition(half, "train").image.dtype == np.float32


def test_partition_isolation(tmp_path):
    """Reading the train partition never touches test arrays: a file without them still loads its train part."""
    fs = make_set(np.random.default_rng(1))
    path = tmp_path / "f.npz"
    save_feature_set(path, fs)
    with np.load(path) as npz:
        only_train = {k: npz[k] for k in npz.files if not k.startswith("test_")}
    np.savez(tmp_path / "train_only.npz", **only_train)
    assert load_partition(tmp_path / "train_only.npz", "train").image.shape == (20, 8)
    with pytest.raises(FeatureFileError, match="missing 'test_image'"):
        load_partition(tmp_path / "train_only.npz", "test")


def test_errors_name_the_file_and_leave_nothing(tmp_path):
    fs = make_set(np.random.default_rng(2))
    fs.test.text = np.full((5, 8), np.nan)
    with pytest.raises(FeatureFileError, match="test_text contains 40 NaN"):
        save_feature_set(tmp_path / "bad.npz", fs)
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left
    good = save_feature_set(tmp_path / "good.npz", make_set(np.random.default_rng(3)))
    (tmp_path / "trunc.npz").write_bytes(good.read_bytes()[:300])
    with pytest.raises(FeatureFileError, match="trunc.npz"):
        load_partition(tmp_path / "trunc.npz", "train")
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_partition(tmp_path / "nope.npz", "train")

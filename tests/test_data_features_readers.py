"""Readers for the feature files users already have (ATM .pt, NICE .npy), written here in their published layouts."""
import numpy as np
import pytest
import torch

from bench.data.dataset import ThingsEEG
from bench.data.errors import FeatureFileError
from bench.data.features import feature_files, find_feature_file, load_partition_any
from data_fakes import make_root, write_atm_features, write_nice_features


def test_atm_pair(tmp_path):
    written = write_atm_features(tmp_path / "feats", 0)
    for name in ("ViT-H-14_features_train.pt", "ViT-H-14_features_test.pt"):
        train = load_partition_any(tmp_path / "feats" / name, "train")
        np.testing.assert_allclose(train.image, written["train"]["img_features"].numpy())
        np.testing.assert_allclose(train.text, written["train"]["text_features"].numpy())
    test = load_partition_any(tmp_path / "feats", "test")
    assert test.image.shape == (3, 32) and test.text.shape == (3, 32) and test.centroid is None
    assert test.meta["source"] == "atm"


def test_atm_bare_tensor_and_errors(tmp_path):
    torch.save(torch.ones(5, 8), tmp_path / "ViT-H-14_features_test.pt")
    bare = load_partition_any(tmp_path / "ViT-H-14_features_test.pt", "test")
    assert bare.image.shape == (5, 8) and bare.text is None
    with pytest.raises(FeatureFileError, match=r"ViT-H-14_features_train\.pt does not exist"):
        load_partition_any(tmp_path / "ViT-H-14_features_test.pt", "train")
    torch.save({"features": torch.ones(2, 2)}, tmp_path / "RN50_features_train.pt")
    with pytest.raises(FeatureFileError, match=r"RN50_features_train\.pt: expected a dict with img_features"):
        load_partition_any(tmp_path / "RN50_features_train.pt", "train")
    torch.save(torch.ones(5, 8), tmp_path / "ViT-H-14_features_train.pt")
    with pytest.raises(FeatureFileError, match="several ATM feature sets"):
        load_partition_any(tmp_path, "train")


def test_atm_refuses_code_in_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"img_features": torch.ones(2, 2), "x": Evil()}, tmp_path / "ViT-H-14_features_train.pt")
    with pytest.raises(FeatureFileError, match=r"ViT-H-14_features_train\.pt: torch\.load\(weights_only=True\)"):
        load_partition_any(tmp_path / "ViT-H-14_features_train.pt", "train")
    assert not marker.exists()


def test_nice_files_with_centres(tmp_path):
    train, test, centre = write_nice_features(tmp_path / "dnn_feature", np.random.default_rng(0))
    loaded = load_partition_any(tmp_path, "train")  # found in the dnn_feature/ sub-folder
    np.testing.assert_array_equal(loaded.image, train[:, 0])
    assert loaded.centroid is None
    loaded_test = load_partition_any(tmp_path / "dnn_feature" / "clip_feature_maps_training.npy", "test")
    np.testing.assert_array_equal(loaded_test.image, test[:, 0])
    np.testing.assert_array_equal(loaded_test.centroid, centre)
    assert feature_files(tmp_path, "train")[1] == [tmp_path / "dnn_feature" / "clip_feature_maps_training.npy"]
    with pytest.raises(FeatureFileError, match="concept centres alone"):
        load_partition_any(tmp_path / "dnn_feature" / "center_clip.npy", "test")


def test_nice_errors_name_the_file(tmp_path):
    write_nice_features(tmp_path, np.random.default_rng(1), centres=False)
    assert load_partition_any(tmp_path, "test").centroid is None
    path = tmp_path / "clip_feature_maps_test.npy"
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(FeatureFileError, match=r"clip_feature_maps_test\.npy: not a readable numeric \.npy"):
        load_partition_any(tmp_path, "test")
    np.save(path, np.full((3, 1, 24), np.nan, dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"clip_feature_maps_test\.npy: image features contains 72 NaN"):
        load_partition_any(tmp_path, "test")
    with pytest.raises(FeatureFileError, match=r"features\.txt: unrecognised feature file name"):
        load_partition_any(tmp_path / "features.txt", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureFileError, match=r"empty: no feature file"):
        load_partition_any(tmp_path / "empty", "train")


def test_dataset_uses_atm_and_nice_files(tmp_path):
    fake = make_root(tmp_path / "root", "nice-pickle")
    (fake.root / "features.npz").unlink()
    write_atm_features(fake.root, 3)
    ds = ThingsEEG.open(fake.root)
    assert ds.feature_path.name == "ViT-H-14_features_train.pt"
    assert ds.train_features().text.shape == (4, 32) and ds.test_features().image.shape == (3, 32)
    nice_dir = tmp_path / "nice"
    write_nice_features(nice_dir, np.random.default_rng(2))
    nice = ThingsEEG.open(fake.root, features=nice_dir)
    assert nice.test_features().centroid.shape == (3, 24)
    assert nice.fingerprint() != ds.fingerprint()
    assert find_feature_file([tmp_path / "absent", fake.root]) == fake.root / "ViT-H-14_features_train.pt"

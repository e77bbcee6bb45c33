"""partition_tables: which tables a feature file holds for a partition, from headers only (no feature value read)."""
import zipfile

import numpy as np
import pytest
import torch

from bench.data import features
from bench.data.errors import FeatureFileError
from bench.data.features import (FeatureSet, PartitionFeatures, load_partition, partition_tables, save_feature_set)
from data_fakes import write_atm_features, write_nice_features


def truncate_npy_payloads(src, dst, prefix):
    """A copy of the .npz ``src`` whose members starting with ``prefix`` keep their .npy header but lose their data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.startswith(prefix):
                data = data[:128]  # numpy pads the header to 64-byte multiples: 128 bytes hold these headers
            zout.writestr(name, data)


def test_our_npz_reports_tables_and_shapes_without_reading_arrays(tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet(train=PartitionFeatures(image=rng.normal(size=(20, 8)), text=rng.normal(size=(4, 8))),
                    test=PartitionFeatures(image=rng.normal(size=(5, 8)), centroid=rng.normal(size=(5, 8))))
    path = save_feature_set(tmp_path / "features.npz", fs)
    assert partition_tables(path, "train") == {"image": (20, 8), "text": (4, 8)}
    assert partition_tables(tmp_path, "test") == {"image": (5, 8), "centroid": (5, 8)}
    # the test arrays' data is gone: loading fails, the header-only report still works
    truncate_npy_payloads(path, tmp_path / "sealed.npz", "test_")
    with pytest.raises(FeatureFileError):
        load_partition(tmp_path / "sealed.npz", "test")
    assert partition_tables(tmp_path / "sealed.npz", "test") == {"image": (5, 8), "centroid": (5, 8)}


def test_npz_errors_name_the_file(tmp_path):
    np.savez(tmp_path / "x.npz", train_image=np.zeros((3, 2)))
    with pytest.raises(FeatureFileError, match=r"x.npz: missing 'test_image' \(has: train_image\)"):
        partition_tables(tmp_path / "x.npz", "test")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FeatureFileError, match=r"bad.npz: not a readable .npz"):
        partition_tables(tmp_path / "bad.npz", "train")
    np.savez(tmp_path / "flat.npz", train_image=np.zeros(3))
    with pytest.raises(FeatureFileError, match=r"flat.npz: image features must be 2-D"):
        partition_tables(tmp_path / "flat.npz", "train")


def test_atm_pair_is_memory_mapped_not_read(tmp_path, monkeypatch):
    write_atm_features(tmp_path, 0)
    monkeypatch.setattr(features, "_read_atm", lambda path: pytest.fail("the ATM file was read whole"))
    assert partition_tables(tmp_path, "train") == {"image": (12, 32), "text": (4, 32)}
    assert partition_tables(tmp_path / "ViT-H-14_features_train.pt", "test") == {"image": (3, 32), "text": (3, 32)}
    torch.save(torch.ones(5, 8), tmp_path / "ViT-H-14_features_test.pt")
    assert partition_tables(tmp_path, "test") == {"image": (5, 8)}


def test_atm_legacy_format_and_refused_code(tmp_path):
    torch.save({"img_features": torch.ones(5, 8)}, tmp_path / "RN50_features_test.pt",
               _use_new_zipfile_serialization=False)  # cannot be memory-mapped: read whole instead
    assert partition_tables(tmp_path / "RN50_features_test.pt", "test") == {"image": (5, 8)}
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"img_features": torch.ones(2, 2), "x": Evil()}, tmp_path / "RN50_features_train.pt")
    with pytest.raises(FeatureFileError, match=r"RN50_features_train\.pt: torch\.load\(weights_only=True\)"):
        partition_tables(tmp_path / "RN50_features_train.pt", "train")
    assert not marker.exists()


def test_nice_files_from_npy_headers(tmp_path):
    write_nice_features(tmp_path / "with", np.random.default_rng(0))
    assert partition_tables(tmp_path / "with", "train") == {"image": (12, 24)}
    assert partition_tables(tmp_path / "with", "test") == {"image": (3, 24), "centroid": (3, 24)}
    write_nice_features(tmp_path / "without", np.random.default_rng(0), centres=False)
    assert partition_tables(tmp_path / "without", "test") == {"image": (3, 24)}
    test_file = tmp_path / "with" / "clip_feature_maps_test.npy"
    test_file.write_bytes(test_file.read_bytes()[:128])  # header only: the values are never needed
    assert partition_tables(tmp_path / "with", "test")["image"] == (3, 24)

"""THINGS image folders: label order, concept names, prompts, errors."""
import pytest

from bench.data.concepts import ImageFolderError, concept_name, make_prompts, scan_things_images


def layout(root, train=(("00002_zebra", 2), ("00001_aircraft_carrier", 2)), test=(("00001_wok", 1),)):
    for part, spec in (("training_images", train), ("test_images", test)):
        for folder, n in spec:
            d = root / part / folder
            d.mkdir(parents=True)
            for i in reversed(range(n)):
                (d / f"{folder.split('_', 1)[1]}_{i:02d}b.jpg").write_bytes(b"x")
    return root


def test_label_order_and_names(tmp_path):
    imgs = scan_things_images(layout(tmp_path))
    assert imgs.train_concepts == ["aircraft_carrier", "zebra"]
    assert [p.name for p in imgs.train_images] == ["aircraft_carrier_00b.jpg", "aircraft_carrier_01b.jpg",
                                                   "zebra_00b.jpg", "zebra_01b.jpg"]
    assert imgs.images_per_train_concept == 2 and imgs.test_concepts == ["wok"]
    assert len(imgs.list_hash()) == 16


def test_prompts():
    assert concept_name("00001_aircraft_carrier") == "aircraft_carrier" and concept_name("bat1") == "bat1"
    assert make_prompts(["aircraft_carrier"]) == ["This picture is aircraft_carrier"]
    assert make_prompts(["aircraft_carrier"], "This is a {concept}.", True) == ["This is a aircraft carrier."]
    with pytest.raises(ValueError, match="must contain"):
        make_prompts(["x"], "no placeholder")


def test_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="no training_images"):
        scan_things_images(tmp_path)
    (tmp_path / "training_images").mkdir()
    with pytest.raises(ImageFolderError, match="no concept folders"):
        scan_things_images(tmp_path)
    uneven = layout(tmp_path / "u", train=(("00001_a", 2), ("00002_b", 3)))
    with pytest.raises(ImageFolderError, match=r"different numbers of images \(\[2, 3\]\)"):
        scan_things_images(uneven)

"""`bench features`: real open_clip and timm models (random weights), real PNGs in the THINGS layout."""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.concepts import ImageFolderError, make_prompts, scan_things_images
from bench.data.features import FeatureSet, load_partition, read_meta, save_feature_set
from bench.extract import FeatureExtractionError, Weights, extract_features, get_extractor, sha256_file

TINY_CLIP = "tb-tiny-vit"  # vision: 3 blocks of width 48 on 32×32 inputs; text: 2 blocks; joint embedding 32
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
RANDOM = Weights(None, "random-init")
#: A separate process that SIGKILLs itself once its third image shard is on disk: a real kill, injected by the test
#: through extract_features' on_batch observer (the library has no kill switch of its own).
KILLED_RUN = """
import os, signal, sys
from bench.extract import extract_features

def kill_after_three(computed):
    if computed >= 3:
        os.kill(os.getpid(), signal.SIGKILL)

extract_features(sys.argv[1], "timm:test_vit", sys.argv[2], random_init=True, batch_size=1, progress=False,
                 on_batch=kill_after_three)
"""


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """3 training concepts × 2 images and 2 test concepts × 1, created out of label order, in mixed PIL modes."""
    root = tmp_path_factory.mktemp("things")
    rng = np.random.default_rng(0)
    spec = {"training_images": ["00003_zebra", "00001_aircraft_carrier", "00002_bat1"],
            "test_images": ["00002_wok", "00001_antelope"]}
    modes = iter(["RGB", "RGBA", "L", "RGB", "RGB", "RGB", "L", "RGB"])
    for part, folders in spec.items():
        for folder in folders:
            d = root / part / folder
            d.mkdir(parents=True)
            for k in reversed(range(2 if part == "training_images" else 1)):
                mode = next(modes)
                shape = (24 + 9 * k, 40) + ((len(mode),) if mode != "L" else ())
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(d / f"{folder.split('_', 1)[1]}_{k:02d}b.png")
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    cfg = tmp_path_factory.mktemp("oc") / f"{TINY_CLIP}.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg)
    return f"open_clip:{TINY_CLIP}"


def run(things, model, out, **kw):
    kw.setdefault("random_init", True)
    kw.setdefault("batch_size", 4)
    kw.setdefault("workers", 2)
    return extract_features(things, model, out, progress=False, **kw)


def per_image(ex, paths, layer=None, pool="head"):
    """Each image alone through the extractor: the reference for row order, batching and normalisation."""
    with torch.inference_mode():
        x = [ex.encode_image(ex.transform(Image.open(p).convert("RGB"))[None], layer, pool)[0].numpy() for p in paths]
    x = np.stack(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_open_clip_final_layer(things, tiny_clip, tmp_path):
    out = tmp_path / "f.npz"
    res = run(things, tiny_clip, out, batch_size=4)
    train, test = load_partition(out, "train"), load_partition(out, "test")
    assert train.image.shape == (6, 32) and train.text.shape == (3, 32)
    assert test.image.shape == (2, 32) and test.text.shape == (2, 32)
    for arr in (train.image, train.text, test.image, test.text):
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    scan = scan_things_images(things)
    assert scan.train_concepts == ["aircraft_carrier", "bat1", "zebra"]

    ex = get_extractor(tiny_clip, random_init=True).load("cpu", RANDOM)
    np.testing.assert_allclose(train.image, per_image(ex, scan.train_images), atol=1e-5)
    np.testing.assert_allclose(test.image, per_image(ex, scan.test_images), atol=1e-5)
    assert np.abs(train.image @ train.image.T - np.eye(6)).max() < 0.9999  # six different images, six different rows
    with torch.inference_mode():
        text = ex.encode_text(make_prompts(scan.train_concepts, "This picture is {concept}")).numpy()
    np.testing.assert_allclose(train.text, text / np.linalg.norm(text, axis=1, keepdims=True), atol=1e-5)

    meta = read_meta(out)
    assert meta == res.meta and meta["format"] == "thingsbench-features"
    assert meta["model"] == tiny_clip and meta["weights"] == "random-init" and meta["seed"] == 0
    assert meta["layer"] is None and meta["pool"] == "head" and meta["text"] is True
    assert meta["transform"] == repr(ex.transform) and "CenterCrop" in meta["transform"]
    assert "Random" not in meta["transform"]  # the evaluation transform, not the random-crop training one
    assert meta["image_list_hash"] == scan.list_hash() and meta["prompt_template"] == "This picture is {concept}"
    assert meta["underscores_to_spaces"] is False and meta["dtype"] == "float32" and meta["normalized"] is True
    assert meta["created_by"] == "bench features" and meta["dim"] == 32
    assert not out.with_name("f.npz.partial").exists()


def test_open_clip_prompts_and_float16(things, tiny_clip, tmp_path):
    ref = run(things, tiny_clip, tmp_path / "ref.npz")
    out = tmp_path / "p.npz"
    run(things, tiny_clip, out, prompt_template="This is a {concept}.", underscores_to_spaces=True, dtype="float16")
    ex = get_extractor(tiny_clip, random_init=True).load("cpu", RANDOM)
    with torch.inference_mode():
        text = ex.encode_text(["This is a aircraft carrier.", "This is a bat1.", "This is a zebra."]).numpy()
    with np.load(out) as npz:
        assert npz["train_image"].dtype == np.float16 and npz["test_text"].dtype == np.float16
    train = load_partition(out, "train")
    np.testing.assert_allclose(train.text, text / np.linalg.norm(text, axis=1, keepdims=True), atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(train.image, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(train.image, load_partition(ref.path, "train").image, atol=2e-3)
    meta = read_meta(out)
    assert meta["prompt_template"] == "This is a {concept}." and meta["underscores_to_spaces"] is True
    assert meta["dtype"] == "float16"

    no_text = run(things, tiny_clip, ref.path, text=False)  # same file, text now unwanted: a recompute, not a hit
    assert not no_text.cache_hit and load_partition(ref.path, "test").text is None
    assert no_text.meta["text"] is False and no_text.meta["text_note"] == "disabled with --no-text"


def test_open_clip_intermediate_layers(things, tiny_clip, tmp_path):
    scan = scan_things_images(things)
    l1 = run(things, tiny_clip, tmp_path / "l1.npz", layer=1)
    train = load_partition(l1.path, "train")
    assert train.image.shape == (6, 48) and train.text is None  # the vision width, not the 32-d joint space
    assert l1.meta["layer"] == 1 and l1.meta["num_layers"] == 3 and l1.meta["pool"] == "mean"
    assert l1.meta["text"] is False and "intermediate" in l1.meta["text_note"]

    # Independent of forward_intermediates: hook block 1 and average its patch tokens (the class token is row 0).
    ex = get_extractor(tiny_clip, random_init=True).load("cpu", RANDOM)
    seen = []
    handle = ex.model.visual.transformer.resblocks[1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        ex.model.encode_image(torch.stack([ex.transform(Image.open(p).convert("RGB")) for p in scan.train_images]))
    handle.remove()
    tokens = seen[0].numpy()
    assert tokens.shape == (6, 1 + 16, 48)
    expected = tokens[:, 1:].mean(axis=1)
    np.testing.assert_allclose(train.image, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    cls = tokens[:, 0] / np.linalg.norm(tokens[:, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(load_partition(run(things, tiny_clip, tmp_path / "cls.npz", layer=1, pool="cls").path,
                                              "train").image, cls, atol=1e-5)

    l0 = load_partition(run(things, tiny_clip, tmp_path / "l0.npz", layer=0).path, "train").image
    assert l0.shape == (6, 48) and np.abs(l0 - train.image).max() > 1e-2
    last = run(things, tiny_clip, tmp_path / "last.npz", layer=-1)
    assert last.meta["layer"] == 2  # recorded as the absolute index, so -1 and 2 are one cache entry
    assert run(things, tiny_clip, last.path, layer=2).cache_hit
    with pytest.raises(FeatureExtractionError, match=r"--layer 3 is out of range .* 3 blocks"):
        run(things, tiny_clip, tmp_path / "x.npz", layer=3)


def test_timm_final_and_stage_layers(things, tmp_path):
    import timm

    final = run(things, "timm:test_resnet", tmp_path / "final.npz")
    train, test = load_partition(final.path, "train"), load_partition(final.path, "test")
    ref = timm.create_model("test_resnet", pretrained=False)
    assert train.image.shape == (6, ref.num_features) and test.image.shape == (2, ref.num_features)
    assert train.text is None and test.text is None
    assert final.meta["text"] is False and final.meta["text_note"] == "timm models have no text tower"
    ex = get_extractor("timm:test_resnet", random_init=True).load("cpu", RANDOM)
    np.testing.assert_allclose(train.image, per_image(ex, scan_things_images(things).train_images), atol=1e-5)
    assert "CenterCrop" in final.meta["transform"] and "Random" not in final.meta["transform"]

    widths = [f["num_chs"] for f in ref.feature_info]
    stages = {}
    for n in (1, 3):
        r = run(things, "timm:test_resnet", tmp_path / f"s{n}.npz", layer=n)
        stages[n] = load_partition(r.path, "train").image
        assert stages[n].shape == (6, widths[n]) and r.meta["num_layers"] == len(widths)
        np.testing.assert_allclose(np.linalg.norm(stages[n], axis=1), 1.0, atol=1e-5)
    assert widths[1] != widths[3]
    with pytest.raises(FeatureExtractionError, match="no class token"):
        run(things, "timm:test_resnet", tmp_path / "c.npz", layer=1, pool="cls")

    vit = run(things, "timm:test_vit", tmp_path / "vit.npz", layer=2, pool="cls")
    assert load_partition(vit.path, "test").image.shape == (2, 64) and vit.meta["pool"] == "cls"


def test_cache_hit_recompute_and_force(things, tmp_path):
    out = tmp_path / "c.npz"
    first = run(things, "timm:test_vit", out)
    assert not first.cache_hit and first.computed_batches == 3
    stamp = out.stat().st_mtime_ns
    again = run(things, "timm:test_vit", out)
    assert again.cache_hit and again.computed_batches == 0 and out.stat().st_mtime_ns == stamp
    assert "cache hit" in again.messages[0]

    other = run(things, "timm:test_vit", out, dtype="float16")
    assert not other.cache_hit and other.computed_batches == 3
    assert any("different settings" in m and "dtype" in m for m in other.messages)
    assert read_meta(out)["dtype"] == "float16"
    templ = run(things, "timm:test_vit", out, dtype="float16", prompt_template="A photo of {concept}")
    assert not templ.cache_hit and "prompt_template" in templ.messages[0]
    forced = run(things, "timm:test_vit", out, dtype="float16", prompt_template="A photo of {concept}", force=True)
    assert not forced.cache_hit and forced.computed_batches == 3


def test_resume_after_kill(things, tmp_path):
    out = tmp_path / "r.npz"
    partial = tmp_path / "r.npz.partial"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(things), str(out)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not out.exists()
    assert len(list((partial / "train_image").glob("*.npy"))) == 3

    # A partial run made with other settings is never mixed in: it is discarded, and says so.
    shutil.copytree(partial, tmp_path / "other.npz.partial")
    other = run(things, "timm:test_vit", tmp_path / "other.npz", batch_size=1, layer=2)
    assert other.reused_batches == 0 and any("discarding" in m and "layer" in m for m in other.messages)

    resumed = run(things, "timm:test_vit", out, batch_size=1)
    assert resumed.reused_batches == 3 and resumed.computed_batches == 5
    assert any("resuming" in m for m in resumed.messages) and not partial.exists()
    whole = run(things, "timm:test_vit", tmp_path / "whole.npz", batch_size=1)
    assert whole.reused_batches == 0 and whole.computed_batches == 8
    for part in ("train", "test"):
        np.testing.assert_allclose(load_partition(out, part).image, load_partition(whole.path, part).image, atol=1e-6)
    assert {k: v for k, v in read_meta(out).items() if k != "device"} == \
        {k: v for k, v in read_meta(whole.path).items() if k != "device"}


# --- --transform train: the backend's random training transform, seeded per image ------------------------------------
class Interrupted(Exception):
    """Raised from on_batch: the run stops with its finished shards on disk, as a killed one would."""


def stop_after(n):
    def on_batch(computed):
        if computed >= n:
            raise Interrupted
    return on_batch


def per_image_train(ex, paths, part, seed):
    """Each image through the training transform with the documented per-image seed, set by hand: torch's CPU
    generator, Python's random and numpy's global RNG all seeded with SeedSequence([seed, partition, index])."""
    import random

    rows = []
    for index, p in enumerate(paths):
        s = int(np.random.SeedSequence([seed, {"train": 0, "test": 1}[part], index]).generate_state(1)[0])
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s)
        x = ex.train_transform(Image.open(p).convert("RGB"))
        with torch.inference_mode():
            rows.append(ex.encode_image(x[None], None, "head")[0].numpy())
    x = np.stack(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_open_clip_train_transform(things, tiny_clip, tmp_path):
    import random

    scan = scan_things_images(things)
    ev = run(things, tiny_clip, tmp_path / "eval.npz")
    before = torch.get_rng_state(), random.getstate()
    tr = run(things, tiny_clip, tmp_path / "train0.npz", transform="train")
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]  # left as found
    meta = tr.meta
    assert meta["transform_mode"] == "train" and meta["transform_seed"] == 0 and meta["seed"] == 0
    assert "RandomResizedCrop" in meta["transform"] and ev.meta["transform_mode"] == "eval"
    assert "transform_seed" not in ev.meta
    ex = get_extractor(tiny_clip, random_init=True).load("cpu", RANDOM)
    assert meta["transform"] == repr(ex.train_transform)
    for part in ("train", "test"):
        train_rows, eval_rows = load_partition(tr.path, part), load_partition(ev.path, part)
        assert np.abs(train_rows.image - eval_rows.image).max() > 1e-3  # a random crop, not the centre crop
        np.testing.assert_array_equal(train_rows.text, eval_rows.text)  # text does not see the images
        np.testing.assert_allclose(train_rows.image, per_image_train(ex, getattr(scan, f"{part}_images"), part, 0),
                                   atol=1e-5)
    # the same seed gives the same crops whatever the batching, threads and global RNG state (features equal up to the
    # rounding of another batch size); another seed does not
    torch.manual_seed(1234)
    again = run(things, tiny_clip, tmp_path / "again.npz", transform="train", seed=0, batch_size=3, workers=1)
    seed1 = run(things, tiny_clip, tmp_path / "seed1.npz", transform="train", seed=1)
    assert seed1.meta["transform_seed"] == 1
    for part in ("train", "test"):
        np.testing.assert_allclose(load_partition(again.path, part).image, load_partition(tr.path, part).image,
                                   rtol=0, atol=1e-6)
    # train only: the 24×40 images (every test image) admit no crop within open_clip's scale (0.9, 1) and ratio
    # bounds, so RandomResizedCrop falls back to its deterministic centre crop there
    assert np.abs(load_partition(seed1.path, "train").image - load_partition(tr.path, "train").image).max() > 1e-3


def test_train_transform_is_part_of_the_cache_identity(things, tiny_clip, tmp_path):
    out = tmp_path / "t.npz"
    run(things, tiny_clip, out, transform="train")
    assert run(things, tiny_clip, out, transform="train", seed=0).cache_hit
    other_seed = run(things, tiny_clip, out, transform="train", seed=2)
    assert not other_seed.cache_hit and any("transform_seed: '0' → '2'" in m for m in other_seed.messages)
    back = run(things, tiny_clip, out)
    assert not back.cache_hit and any("transform_mode: 'train' → 'eval'" in m for m in back.messages)
    assert read_meta(out)["transform_mode"] == "eval"
    # a file written before --transform existed (no transform_mode key) is still the evaluation transform's
    meta = {k: v for k, v in read_meta(out).items() if k not in ("transform_mode", "format")}
    save_feature_set(out, FeatureSet(train=load_partition(out, "train"), test=load_partition(out, "test"), meta=meta))
    assert "transform_mode" not in read_meta(out) and run(things, tiny_clip, out).cache_hit
    assert not run(things, tiny_clip, out, transform="train").cache_hit


def test_train_transform_resume_equals_uninterrupted(things, tiny_clip, tmp_path):
    out = tmp_path / "r.npz"
    partial = tmp_path / "r.npz.partial"
    # an evaluation-transform partial run is never resumed into a training-transform one
    with pytest.raises(Interrupted):
        run(things, tiny_clip, out, batch_size=1, on_batch=stop_after(2))
    with pytest.raises(Interrupted):
        run(things, tiny_clip, out, transform="train", seed=5, batch_size=1, workers=1, on_batch=stop_after(3))
    assert len(list((partial / "train_image").glob("*.npy"))) == 3 and not out.exists()
    torch.manual_seed(99)  # whatever the process did in between
    resumed = run(things, tiny_clip, out, transform="train", seed=5, batch_size=1, workers=3)
    assert resumed.reused_batches == 3 and resumed.computed_batches == 5
    whole = run(things, tiny_clip, tmp_path / "whole.npz", transform="train", seed=5, batch_size=1)
    assert whole.reused_batches == 0 and whole.computed_batches == 8
    for part in ("train", "test"):
        np.testing.assert_array_equal(load_partition(out, part).image, load_partition(whole.path, part).image)


def test_timm_train_transform(things, tmp_path):
    """timm's training transform draws from Python's random as well as torch's generator: both are seeded."""
    ev = run(things, "timm:test_vit", tmp_path / "eval.npz")
    a = run(things, "timm:test_vit", tmp_path / "a.npz", transform="train", seed=3)
    b = run(things, "timm:test_vit", tmp_path / "b.npz", transform="train", seed=3, batch_size=2, workers=1)
    assert "RandomResizedCropAndInterpolation" in a.meta["transform"] and "RandomHorizontalFlip" in a.meta["transform"]
    ex = get_extractor("timm:test_vit", random_init=True).load("cpu", RANDOM)
    images = scan_things_images(things).train_images
    train = load_partition(a.path, "train").image
    np.testing.assert_allclose(train, load_partition(b.path, "train").image, rtol=0, atol=1e-6)  # other batches
    np.testing.assert_allclose(train, per_image_train(ex, images, "train", 3), atol=1e-5)
    assert np.abs(train - load_partition(ev.path, "train").image).max() > 1e-3


def test_train_transform_refused_without_one(things, tmp_path, monkeypatch):
    from bench.extract import TimmExtractor

    load = TimmExtractor.load

    def load_without_train_transform(self, device, weights):
        load(self, device, weights)
        self.train_transform = None  # a family (e.g. a plugin) that has no training transform
        return self
    monkeypatch.setattr(TimmExtractor, "load", load_without_train_transform)
    with pytest.raises(FeatureExtractionError, match="timm:test_vit has no training transform"):
        run(things, "timm:test_vit", tmp_path / "f.npz", transform="train")
    assert not list(tmp_path.iterdir())
    assert run(things, "timm:test_vit", tmp_path / "f.npz").computed_batches == 3  # eval is unaffected


def _hf_cache_file(home: Path, repo: str, filename: str) -> Path:
    """The layout huggingface_hub leaves behind after a download: refs/main → snapshots/<commit>/<file>."""
    repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    target = repo_dir / "snapshots" / "0123abcd" / filename
    target.parent.mkdir(parents=True)
    return target


def test_timm_weights_file_and_offline_cache(things, tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    torch.manual_seed(123)
    trained = timm.create_model("test_vit", pretrained=False).eval()
    ckpt = tmp_path / "test_vit.safetensors"
    save_file(trained.state_dict(), str(ckpt))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    with pytest.raises(FeatureExtractionError, match=r"no weights for timm:test_vit.*--weights.*--random-init"):
        run(things, "timm:test_vit", tmp_path / "none.npz", random_init=False)
    assert not (tmp_path / "none.npz").exists() and not (tmp_path / "none.npz.partial").exists()

    local = run(things, "timm:test_vit", tmp_path / "w.npz", random_init=False, weights=ckpt)
    assert local.meta["weights"] == digest == sha256_file(ckpt) and str(ckpt) in local.meta["weights_source"]
    trained.reset_classifier(0)
    ex = get_extractor("timm:test_vit", random_init=True).load("cpu", RANDOM)
    with torch.inference_mode():
        x = torch.stack([ex.transform(Image.open(p).convert("RGB")) for p in scan_things_images(things).test_images])
        expected = trained(x).numpy()
    np.testing.assert_allclose(load_partition(local.path, "test").image,
                               expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    random = load_partition(run(things, "timm:test_vit", tmp_path / "r.npz").path, "test").image
    assert np.abs(random - load_partition(local.path, "test").image).max() > 1e-2

    shutil.copy(ckpt, _hf_cache_file(tmp_path / "hf", "timm/test_vit.r160_in1k", "model.safetensors"))
    cached = run(things, "timm:test_vit", tmp_path / "c.npz", random_init=False)
    assert cached.meta["weights"] == digest and cached.meta["weights_source"].startswith("hf-cache:timm/test_vit")
    np.testing.assert_array_equal(load_partition(cached.path, "train").image, load_partition(local.path, "train").image)

    wrong = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(wrong))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint" * 10)
    for bad in (wrong, garbage):
        with pytest.raises(FeatureExtractionError, match=f"cannot load weights {bad}"):
            run(things, "timm:test_vit", tmp_path / "bad.npz", random_init=False, weights=bad)
        assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(FeatureExtractionError, match="does not exist"):
        run(things, "timm:test_vit", tmp_path / "bad.npz", random_init=False, weights=tmp_path / "missing.pt")
    with pytest.raises(FeatureExtractionError, match="exclude each other"):
        run(things, "timm:test_vit", tmp_path / "bad.npz", weights=ckpt)


def test_open_clip_weights_file_and_missing(things, tiny_clip, tmp_path, monkeypatch):
    import open_clip

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip, where open_clip keeps URL downloads
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FeatureExtractionError, match=r"no weights for open_clip:ViT-B-32 \(pretrained 'openai'\)"):
        run(things, "open_clip:ViT-B-32", tmp_path / "none.npz", random_init=False)
    with pytest.raises(FeatureExtractionError, match=r"no weights for open_clip:ViT-H-14 \(pretrained 'laion2b_s32b"):
        run(things, "open_clip:ViT-H-14", tmp_path / "none.npz", random_init=False)
    with pytest.raises(FeatureExtractionError, match="has no published weights"):
        run(things, tiny_clip, tmp_path / "none.npz", random_init=False)
    assert not list(tmp_path.glob("none.npz*"))

    torch.manual_seed(7)
    trained, _, _ = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(trained.state_dict(), ckpt)
    res = run(things, tiny_clip, tmp_path / "w.npz", random_init=False, weights=ckpt)
    assert res.meta["weights"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ex = get_extractor(tiny_clip, random_init=True).load("cpu", RANDOM)
    with torch.inference_mode():
        x = torch.stack([ex.transform(Image.open(p).convert("RGB")) for p in scan_things_images(things).train_images])
        img = trained.eval().encode_image(x).numpy()
        txt = trained.encode_text(ex.tokenizer()(make_prompts(["aircraft_carrier", "bat1", "zebra"]))).numpy()
    train = load_partition(res.path, "train")
    np.testing.assert_allclose(train.image, img / np.linalg.norm(img, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(train.text, txt / np.linalg.norm(txt, axis=1, keepdims=True), atol=1e-5)


def test_unreadable_image_and_empty_folder(things, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(things, broken)
    bad = broken / "training_images" / "00002_bat1" / "bat1_01b.png"
    bad.write_bytes(b"\x89PNG truncated")
    with pytest.raises(FeatureExtractionError, match=f"cannot read image {bad}"):
        run(things=broken, model="timm:test_vit", out=tmp_path / "b.npz", batch_size=2)
    assert not (tmp_path / "b.npz").exists()

    (tmp_path / "empty" / "training_images").mkdir(parents=True)
    (tmp_path / "empty" / "test_images").mkdir()
    with pytest.raises(ImageFolderError, match="no concept folders"):
        run(tmp_path / "empty", "timm:test_vit", tmp_path / "e.npz")
    (tmp_path / "empty" / "training_images" / "00001_a").mkdir()
    with pytest.raises(ImageFolderError, match="holds no images"):
        run(tmp_path / "empty", "timm:test_vit", tmp_path / "e.npz")
    assert not list(tmp_path.glob("e.npz*"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(out="f.npy"), "feature files are .npz"),
    (dict(dtype="float64"), "--dtype must be one of"),
    (dict(prompt_template="no placeholder"), "must contain"),
    (dict(pool="cls"), "--pool applies to --layer only"),
    (dict(layer=1, pool="max"), "--pool must be one of"),
    (dict(model="foo:bar"), "unknown feature extractor 'foo'"),
    (dict(model="test_vit"), "FAMILY:NAME"),
    (dict(model="timm:test_vitt"), "unknown timm model 'test_vitt'. Did you mean: test_vit"),
    (dict(model="timm:test_vit.nope"), "no pretrained tag 'nope'"),
    (dict(model="open_clip:ViT-H-14", pretrained="nope"), "no pretrained tag 'nope'; known: laion2b"),
    (dict(layer=6), "out of range"),
    (dict(transform="random"), "--transform must be one of eval, train"),
    (dict(seed=1), "--seed applies to --transform train only"),
    (dict(transform="train", seed=-1), "--seed must be a non-negative integer"),
])
def test_bad_options_fail_before_any_output(things, tmp_path, kwargs, match):
    kwargs = {"model": "timm:test_vit", **kwargs}
    out = tmp_path / kwargs.pop("out", "f.npz")
    with pytest.raises(FeatureExtractionError, match=match):
        run(things, kwargs.pop("model"), out, **kwargs)
    assert not list(tmp_path.iterdir())


def test_cli(things, tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "cli.npz"
    args = ["features", "--images", str(things), "--model", "timm:test_vit", "--out", str(out), "--no-progress"]
    main(args + ["--random-init", "--layer", "-1", "--dtype", "float16"])
    meta = read_meta(out)
    assert meta["layer"] == 5 and meta["dtype"] == "float16" and meta["weights"] == "random-init"
    assert "wrote" in capsys.readouterr().err
    main(args + ["--random-init", "--layer", "5", "--dtype", "float16"])
    assert "cache hit" in capsys.readouterr().err
    main(args + ["--random-init", "--transform", "train", "--seed", "7"])
    meta = read_meta(out)
    assert meta["transform_mode"] == "train" and meta["transform_seed"] == 7 and "Random" in meta["transform"]
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main(args[:-3] + ["--out", str(tmp_path / "n.npz")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("error: no weights for timm:test_vit") and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["features", "--images", str(tmp_path / "nowhere"), "--model", "timm:test_vit", "--out", str(out)])
    assert exc.value.code == 1 and "does not exist" in capsys.readouterr().err

    main(["list", "features"])
    listing = capsys.readouterr().out
    assert "open_clip" in listing and "timm" in listing

"""scripts/run_nice_reference.py: in-memory patching of NICE's nice_stand.py, the feature files it is given, a run.

CI has no clone of NICE-EEG, so the patcher is exercised on a stand-in ``nice_stand.py`` written here with the code
shapes the patches target (GPU list, hard-coded paths, ``.cuda()``, CUDA tensor types, the unseeded seed, the subject
loop, 200 test labels, 740 validation images, 768-d projectors): a tiny trainer that reads the data root and the
feature files the way the reference does. With ``NICE_CLONE=/path/to/NICE-EEG`` the real reference also runs one
epoch on the tiny synthetic data root.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_nice_reference.py"

STANDIN = '''"""A stand-in for NICE-EEG's nice_stand.py: the same hard-coded values, a small linear model."""
import os
import argparse
import random
import numpy as np
import torch
import torch.nn as nn

gpus = [6]
os.environ["CUDA_VISIBLE_DEVICES"] = ','.join(map(str, gpus))
result_path = '/home/NICE/results/'
parser = argparse.ArgumentParser()
parser.add_argument('--dnn', default='clip', type=str)
parser.add_argument('--epoch', default='200', type=int)
parser.add_argument('--num_sub', default=10, type=int)
parser.add_argument('-batch_size', '--batch-size', default=1000, type=int)
parser.add_argument('--seed', default=2023, type=int)


class Proj_eeg(nn.Sequential):
    def __init__(self, embedding_dim=63 * 250, proj_dim=768):
        super().__init__(nn.Flatten(), nn.Linear(embedding_dim, proj_dim))


class Proj_img(nn.Sequential):
    def __init__(self, embedding_dim=768, proj_dim=768):
        super().__init__(nn.Linear(embedding_dim, proj_dim))

    def forward(self, x):
        return x


class IE():
    def __init__(self, args, nsub):
        self.args, self.nSub = args, nsub
        self.eeg_data_path = '/home/Data/Things-EEG2/Preprocessed_data_250Hz/'
        self.img_data_path = './dnn_feature/'
        self.test_center_path = './dnn_feature/'
        self.log_write = open(result_path + "log_subject%d.txt" % self.nSub, "w")
        self.Tensor = torch.cuda.FloatTensor
        self.LongTensor = torch.cuda.LongTensor
        self.Enc_eeg = nn.Identity().cuda()
        self.Proj_eeg = Proj_eeg().cuda()
        self.Proj_img = Proj_img().cuda()

    def load(self, part):
        data = np.load(self.eeg_data_path + '/sub-' + format(self.nSub, '02') + '/preprocessed_eeg_' + part + '.npy',
                       allow_pickle=True)
        return np.mean(data['preprocessed_eeg_data'], axis=1).astype(np.float32)

    def get_eeg_data(self):
        return self.load('training'), [], np.expand_dims(self.load('test'), axis=1), None

    def get_image_data(self):
        return (np.squeeze(np.load(self.img_data_path + self.args.dnn + '_feature_maps_training.npy')),
                np.squeeze(np.load(self.img_data_path + self.args.dnn + '_feature_maps_test.npy')))

    def train(self):
        train_eeg, _, test_eeg, _ = self.get_eeg_data()
        train_img, _ = self.get_image_data()
        center = torch.from_numpy(np.load(self.test_center_path + 'center_' + self.args.dnn + '.npy'))
        test_label = np.arange(200)
        shuffle = np.random.permutation(len(train_eeg))
        train_eeg, train_img = train_eeg[shuffle], train_img[shuffle]
        val_eeg, val_img = torch.from_numpy(train_eeg[:740]), torch.from_numpy(train_img[:740])
        train_eeg, train_img = torch.from_numpy(train_eeg[740:]), torch.from_numpy(train_img[740:])
        print('n_val is %d' % len(val_eeg))
        opt = torch.optim.Adam(self.Proj_eeg.parameters(), lr=1e-3)
        for e in range(self.args.epoch):
            for i in range(0, len(train_eeg), self.args.batch_size):
                eeg = train_eeg[i:i + self.args.batch_size].cuda().type(self.Tensor)
                img = self.Proj_img(train_img[i:i + self.args.batch_size].cuda().type(self.Tensor))
                loss = ((self.Proj_eeg(eeg) - img) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                vloss = ((self.Proj_eeg(val_eeg.type(self.Tensor)) - val_img.type(self.Tensor)) ** 2).mean()
            self.log_write.write('Epoch %d: Cos eeg: %.4f, Cos img: %.4f, loss val: %.4f\\n' % (e, loss, loss, vloss))
        with torch.no_grad():
            tfea = self.Proj_eeg(self.Enc_eeg(torch.from_numpy(test_eeg).type(self.Tensor)))
            tfea = tfea / tfea.norm(dim=1, keepdim=True)
            _, indices = (100.0 * tfea @ center.type(self.Tensor).t()).softmax(dim=-1).topk(5)
        label = torch.from_numpy(test_label).type(self.LongTensor).view(-1, 1)
        top1, top3, top5 = ((label == indices[:, :k]).sum().item() / len(label) for k in (1, 3, 5))
        self.log_write.write('The best epoch is: %d\\n' % self.args.epoch)
        self.log_write.write('The test Top1-%.6f, Top3-%.6f, Top5-%.6f\\n' % (top1, top3, top5))
        return top1, top3, top5


def main():
    args = parser.parse_args()
    num_sub = args.num_sub
    for i in range(num_sub):
        seed_n = np.random.randint(args.seed)
        print('seed is ' + str(seed_n))
        random.seed(seed_n)
        np.random.seed(seed_n)
        torch.manual_seed(seed_n)
        IE(args, i + 1).train()


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_nice_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def make_clone(folder: Path, source: str = STANDIN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nice_stand.py").write_text(source)
    return folder


def plan(script, **overrides):
    values = dict(subject=2, eeg_dir="/data/Preprocessed_data_250Hz/", feature_dir="/work/dnn_feature/",
                  result_dir="/work/results/", n_test=40, n_val=5, dim=1024)
    return script.Plan(**{**values, **overrides})


def test_every_hard_coded_value_is_patched_in_memory(script, tmp_path):
    clone = make_clone(tmp_path / "clone")
    path, patched = script.patched_reference(clone, plan(script))
    assert path.read_text() == STANDIN  # the clone is only read
    assert patched.count("\n") == STANDIN.count("\n")  # line numbers stay the clone's
    for gone in (".cuda()", "torch.cuda.FloatTensor", "torch.cuda.LongTensor", "np.random.randint(args.seed)",
                 "gpus = [6]", "/home/", "./dnn_feature/", "np.arange(200)", "[:740]", "[740:]", "range(num_sub)"):
        assert gone not in patched, gone
    for present in ("gpus = []", "result_path = '/work/results/'",
                    "self.eeg_data_path = '/data/Preprocessed_data_250Hz/'",
                    "self.img_data_path = '/work/dnn_feature/'", "self.test_center_path = '/work/dnn_feature/'",
                    "seed_n = args.seed", "for i in [1]:", "test_label = np.arange(40)", "train_eeg[:5]",
                    "train_img[5:]", "Proj_eeg(proj_dim=1024)", "Proj_img(embedding_dim=1024, proj_dim=1024)",
                    "self.Tensor = torch.FloatTensor"):
        assert present in patched, present
    compile(patched, str(path), "exec")


@pytest.mark.parametrize("old, new, named", [
    ("seed_n = np.random.randint(args.seed)", "seed_n = 7", "unseeded seed"),
    ("result_path = '/home/NICE/results/'", "RESULTS = '/home/NICE/results/'", "result path"),
    ("self.Proj_eeg = Proj_eeg().cuda()", "self.Proj_eeg = Proj_eeg(1440).cuda()", "EEG projector"),
    ("test_label = np.arange(200)", "test_label = np.arange(self.num_class)", "200 test labels"),
])
def test_a_pattern_that_no_longer_matches_is_refused_by_name(script, tmp_path, old, new, named):
    assert old in STANDIN
    clone = make_clone(tmp_path / "clone", STANDIN.replace(old, new))
    with pytest.raises(script.RefusedRun, match=named) as info:
        script.patched_reference(clone, plan(script))
    assert str(clone / "nice_stand.py") in str(info.value) and "matched 0 time(s)" in str(info.value)


def test_a_cuda_use_the_patches_do_not_know_is_refused(script, tmp_path):
    clone = make_clone(tmp_path / "clone", STANDIN.replace("Proj_img().cuda()", "Proj_img().to('cuda')"))
    with pytest.raises(script.RefusedRun, match=r"CUDA use left after patching.*line \d+: self.Proj_img = "):
        script.patched_reference(clone, plan(script))


def test_a_pattern_that_matches_too_often_is_refused(script, tmp_path):
    clone = make_clone(tmp_path / "clone", STANDIN.replace("print('n_val is %d' % len(val_eeg))",
                                                           "print(np.arange(1000)[:740])"))
    with pytest.raises(script.RefusedRun, match=r"\[:740\].*matched 3 time\(s\), expected 2"):
        script.patched_reference(clone, plan(script))


def test_a_folder_without_nice_stand_is_refused(script, tmp_path):
    with pytest.raises(script.RefusedRun, match="no nice_stand.py"):
        script.patched_reference(tmp_path, plan(script))


def test_feature_files_in_nice_layouts(script, tiny_root, tmp_path):
    from bench.data.features import load_partition

    files = script.write_nice_features(tiny_root / "features.npz", tmp_path / "dnn_feature")
    assert [f.name for f in files] == ["clip_feature_maps_training.npy", "clip_feature_maps_test.npy",
                                       "center_clip.npy"]
    train, test = (load_partition(tiny_root / "features.npz", part) for part in ("train", "test"))
    arrays = [np.load(f) for f in files]
    assert arrays[0].shape == (len(train.image), 1, train.dim) and arrays[0].dtype == np.float32
    assert arrays[1].shape == (len(test.image), 1, test.dim) and arrays[2].shape == test.centroid.shape
    np.testing.assert_array_equal(arrays[0][:, 0], train.image)
    np.testing.assert_array_equal(arrays[1][:, 0], test.image)
    np.testing.assert_array_equal(arrays[2], test.centroid)  # unnormalised means: NICE scores 100·ê·c on them
    assert script.feature_shapes(files) == (len(train.image), len(test.image), train.dim)


def test_validation_images_follow_nice_fraction(script):
    assert script.validation_images(16540, None) == 740
    assert script.validation_images(400, None) == 18  # 740 / 16540 of 400
    assert script.validation_images(400, 40) == 40
    with pytest.raises(script.RefusedRun, match="--val-images 400"):
        script.validation_images(400, 400)


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_standin_runs_end_to_end_on_the_tiny_root(tiny_root, tmp_path):
    clone = make_clone(tmp_path / "clone")
    before = hashlib.sha256((clone / "nice_stand.py").read_bytes()).hexdigest()
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_script("--clone", str(clone), "--data-root", str(tiny_root), "--subject", "2", "--epochs", "2",
                      "--seed", "3", "--batch-size", "16", "--out", str(out), "--work-dir", str(work), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "nice-reference_sub-02_seed-3_epochs-2.json").read_text())
    assert record["subject"] == 2 and record["seed"] == 3 and record["epochs"] == 2 and record["epochs_logged"] == 2
    assert record["n_test"] == 40 and record["val_images"] == 5 and record["feature_dim"] == 1024
    assert 0 <= record["top1"] <= record["top3"] <= record["top5"] <= 100 and record["wall_s"] > 0
    assert record["reference_commit"] is None and len(record["data_fingerprint"]) == 5
    stdout = (work / "stdout.txt").read_text()
    assert "seed is 3" in stdout and "n_val is 5" in stdout  # the given seed itself; NICE's fraction of 120 images
    assert (out / "nice-reference_sub-02_seed-3_epochs-2.log").read_text().startswith("Epoch 0:")
    assert hashlib.sha256((clone / "nice_stand.py").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in clone.iterdir()) == ["nice_stand.py"]  # nothing written into the clone
    # the second pass scored NICE's final model: its embeddings reproduce NICE's logged top-1 on the centres by ê·c,
    # and top1_image is the same embeddings against the test images by cosine
    emb = np.load(out / "nice-reference_sub-02_seed-3_epochs-2.test-embedding.npy").astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    image = np.load(work / "dnn_feature" / "clip_feature_maps_test.npy")[:, 0].astype(np.float64)
    centre = np.load(work / "dnn_feature" / "center_clip.npy").astype(np.float64)
    hits = np.arange(len(emb))
    assert record["top1"] == pytest.approx(100 * np.mean((unit @ centre.T).argmax(1) == hits))
    cosine = unit @ (image / np.linalg.norm(image, axis=1, keepdims=True)).T
    assert record["top1_image"] == pytest.approx(100 * np.mean(cosine.argmax(1) == hits))
    assert record["top1_image"] != record["top1"] or record["top5_image"] != record["top5"]  # not a copy


def test_an_image_test_that_did_not_score_nices_model_is_refused(script):
    scores = {"top1": 30.0, "top5": 70.0}
    child = {"top1_centre_check": 30.0, "top5_centre_check": 70.0, "top1_image": 25.0, "top5_image": 60.0,
             "embedding_common_cos": 0.1}
    assert script.second_pass_scores(child, scores)["top1_image"] == 25.0
    with pytest.raises(script.RefusedRun, match="top-5 on the centres .* is not NICE's own"):
        script.second_pass_scores({**child, "top5_centre_check": 71.0}, scores)
    with pytest.raises(script.RefusedRun, match="reported no top1_image"):
        script.second_pass_scores({k: v for k, v in child.items() if k != "top1_image"}, scores)
    with pytest.raises(script.RefusedRun, match="no class IE"):
        script.add_image_test(type(sys)("nice_stand"), {})


def test_missing_subject_is_refused_before_running(tiny_root, tmp_path):
    clone = make_clone(tmp_path / "clone")
    proc = run_script("--clone", str(clone), "--data-root", str(tiny_root), "--subject", "9", "--epochs", "1",
                      "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "sub-09/preprocessed_eeg_training.npy" in proc.stderr and not (tmp_path / "out").exists()


def test_a_missing_import_is_named(script, tmp_path):
    clone = make_clone(tmp_path / "clone", "import os\nimport surely_not_installed_pkg\nfrom local_mod import x\n")
    (clone / "local_mod.py").write_text("x = 1\n")
    with pytest.raises(script.RefusedRun, match="imports surely_not_installed_pkg, not installed"):
        script.check_requirements(clone, (clone / "nice_stand.py").read_text(), "nice_stand.py")


@pytest.mark.skipif(not os.environ.get("NICE_CLONE"), reason="set NICE_CLONE to a clone of eeyhsong/NICE-EEG")
def test_real_reference_one_epoch_on_the_tiny_root(tiny_root, tmp_path):
    out = tmp_path / "out"
    proc = run_script("--clone", os.environ["NICE_CLONE"], "--data-root", str(tiny_root), "--subject", "1",
                      "--epochs", "1", "--seed", "0", "--batch-size", "32", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "nice-reference_sub-01_seed-0_epochs-1.json").read_text())
    assert record["reference_commit"] and record["epochs_logged"] == 1 and record["n_test"] == 40
    assert 0 <= record["top1"] <= record["top5"] <= 100 and 0 <= record["top1_image"] <= record["top5_image"] <= 100


@pytest.fixture
def nice_module(script, monkeypatch):
    """NICE-EEG's ``nice_stand.py`` from ``$NICE_CLONE``, patched in memory as the runner does; the environment and
    ``sys.path`` it changes are restored afterwards."""
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the module level writes CUDA_VISIBLE_DEVICES
    monkeypatch.setattr(sys, "path", list(sys.path))
    ref = script.load_reference_module(Path(os.environ["NICE_CLONE"]), plan(script, n_test=200, n_val=740))
    monkeypatch.delitem(sys.modules, "nice_stand")
    return ref


def reference_tensors(enc, proj) -> list:
    """``Enc_eeg``'s and ``Proj_eeg``'s tensors in order: our ``tsconv`` encoder's state dict, value for value."""
    return [*enc.state_dict().values(), *proj.state_dict().values()]


def load_reference_weights(ours, enc, proj) -> None:
    """NICE's weights into our ``tsconv`` encoder (the same shapes, checked)."""
    theirs = reference_tensors(enc, proj)
    assert [v.shape for v in theirs] == [v.shape for v in ours.state_dict().values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs)))


@pytest.mark.skipif(not os.environ.get("NICE_CLONE"), reason="set NICE_CLONE to a clone of eeyhsong/NICE-EEG")
def test_reference_model_equals_our_tsconv_with_its_weights(nice_module):
    """NICE's Enc_eeg + Proj_eeg and our `tsconv` encoder: same parameters in the same order, same outputs (eval and
    train mode: even the dropout draws line up), so a fidelity gap cannot come from the model."""
    import torch
    from bench.encoders.tsconv import TSConvEncoder

    ref = nice_module
    torch.manual_seed(0)
    enc, proj = ref.Enc_eeg(), ref.Proj_eeg(proj_dim=1024)
    enc.apply(ref.weights_init_normal), proj.apply(ref.weights_init_normal)
    ours = TSConvEncoder(63, 250, 1024)
    load_reference_weights(ours, enc, proj)
    x = torch.randn(8, 63, 250)
    for train in (False, True):
        enc.train(train), proj.train(train), ours.train(train)
        torch.manual_seed(1)
        a = proj(enc(x.unsqueeze(1)))
        torch.manual_seed(1)
        torch.testing.assert_close(ours(x), a, atol=1e-4, rtol=1e-4)


def nice_reference_step(modules, optimizer, eeg, img):
    """One training step as nice_stand.py's ``IE.train`` writes it (lines 279-305), on its three modules."""
    import torch
    import torch.nn.functional as F

    enc, proj, proj_img = modules
    eeg_features = proj(enc(eeg.unsqueeze(1)))
    img_features = proj_img(img)
    eeg_features = eeg_features / eeg_features.norm(dim=1, keepdim=True)
    img_features = img_features / img_features.norm(dim=1, keepdim=True)
    logits_per_eeg = torch.ones([]).mul(np.log(1 / 0.07)).exp() * eeg_features @ img_features.t()
    labels = torch.arange(eeg.shape[0])
    loss = (F.cross_entropy(logits_per_eeg, labels) + F.cross_entropy(logits_per_eeg.t(), labels)) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.skipif(not os.environ.get("NICE_CLONE"), reason="set NICE_CLONE to a clone of eeyhsong/NICE-EEG")
def test_reference_training_steps_equal_ours(nice_module):
    """Twelve optimiser steps from the same weights on the same batches and dropout draws: NICE's Adam over its three
    modules and its loss (:func:`nice_reference_step`) against our ``nice`` method as the published protocol resolves
    it, built and stepped by the harness. Losses, weights and BatchNorm running statistics agree (but for the conv
    biases before a BatchNorm, see below), so loss, scale, optimiser and BN momentum are the same."""
    import itertools

    import torch

    from bench.execute import build_method
    from bench.method import Batch, DataInfo, TrainState
    from bench.specs import resolve_config
    from bench.train import build_optimizer

    ref, dim = nice_module, 64
    torch.manual_seed(0)
    theirs = ref.Enc_eeg(), ref.Proj_eeg(proj_dim=dim), ref.Proj_img(embedding_dim=dim, proj_dim=dim)
    for module in theirs:
        module.apply(ref.weights_init_normal)
    theirs_opt = torch.optim.Adam(itertools.chain(*(m.parameters() for m in theirs)), lr=0.0002,
                                  betas=(0.5, 0.999))  # IE.lr, IE.b1, IE.b2
    cfg = resolve_config("nice", sets=["protocol.name=published", "train.batch_size=32"])
    info = DataInfo(n_chans=63, n_times=250, sfreq=250.0, ch_names=tuple(f"c{i}" for i in range(63)),
                    feature_dim=dim, n_subjects=1, n_train_concepts=50, has_text=False)
    ours = build_method("nice", cfg, info, seed=1)
    load_reference_weights(ours.encoder, *theirs[:2])
    ours_opt, state = build_optimizer(ours, cfg["train"]), TrainState(epoch=1, epochs=1, step=0, steps_per_epoch=12)
    gen = torch.Generator().manual_seed(2)
    for step in range(12):
        eeg, img = torch.randn(32, 63, 250, generator=gen), torch.randn(32, dim, generator=gen) + 0.5
        for module in (*theirs, ours):
            module.train()
        torch.manual_seed(100 + step)
        loss = nice_reference_step(theirs, theirs_opt, eeg, img)
        torch.manual_seed(100 + step)
        out = ours.training_loss(Batch(eeg=eeg, image=img, concept=torch.arange(32), subject=None), state)
        ours_opt.zero_grad()
        out.loss.backward()
        ours_opt.step()
        torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    # A conv bias right before a BatchNorm has no effect in training (the batch mean removes it), so its gradient is
    # rounding noise, which Adam scales up to steps of ~lr/10: those biases, and the running means that track them,
    # wander differently on the two sides (by ~1.5e-3 in 12 steps, on both alike). In eval mode they nearly cancel
    # (bias − running mean, which lags the bias by the momentum's ~10 steps): the outputs agree to ~2e-3.
    before_bn = ("trunk.temporal.0.bias", "trunk.temporal.2.running_mean", "trunk.spatial.0.bias",
                 "trunk.spatial.1.running_mean")
    for (name, a), b in zip(ours.encoder.state_dict().items(), reference_tensors(*theirs[:2])):
        if name not in before_bn:
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    for module in (*theirs, ours):
        module.eval()
    eeg = torch.randn(16, 63, 250, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_eeg(eeg, None), theirs[1](theirs[0](eeg.unsqueeze(1))), atol=1e-2,
                                   rtol=1e-2)


def test_fidelity_table_pairs_runs_and_judges_the_mean(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fidelity_table", ROOT / "scripts" / "fidelity_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    ref_dir, runs = tmp_path / "ref", tmp_path / "ours" / "runs"
    ref_dir.mkdir()
    runs.mkdir(parents=True)
    for seed, (ref1, our1) in enumerate([(50.0, 49.0), (40.0, 44.0)]):
        (ref_dir / f"nice-reference_sub-01_seed-{seed}_epochs-4.json").write_text(json.dumps(
            {"subject": 1, "seed": seed, "epochs": 4, "batch_size": 8, "data_root": str(tmp_path), "top1": ref1,
             "top5": 90.0, "wall_s": 10.0, "cpu_s": 5.0}))
        for protocol, epochs in (("published", 4), ("intra", 4), ("published", 5)):  # only the first pairs
            (runs / f"{seed}-{protocol}-{epochs}.json").write_text(json.dumps(
                {"method": "nice", "protocol": protocol, "status": "completed", "subject": 1, "seed": seed,
                 "config": {"train": {"epochs": epochs, "batch_size": 8}, "data": {"root": str(tmp_path)}},
                 "metrics": {"top1": our1, "top5": 80.0}, "timings": {"train_s": 3.0, "eval_s": 1.0}}))
    assert table.main(["--reference", str(ref_dir), "--ours", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 | 40.0 | 90.0 | 10 (5) | 44.0 | 80.0 | 4 |" in out
    assert "| mean ± sd | 2 runs | 45.0 ± 7.1 | 90.0 ± 0.0 | | 46.5 ± 3.5 |" in out
    assert "+1.5 points (within ±2); 95 % CI [" in out
    assert table.main(["--reference", str(ref_dir), "--ours", str(tmp_path / "ours"), "--tolerance", "1"]) == 1
    assert table.main(["--reference", str(ref_dir), "--ours", str(tmp_path / "ours"), "--protocol", "inter"]) == 2

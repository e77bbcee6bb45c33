"""scripts/run_ubp_reference.py: UBP's config and inputs written from a data root, main.py and base/data_eeg.py
patched in memory, a run on a stand-in clone.

CI has no clone of Uncertainty-aware-Blur-Prior (nor pytorch_lightning), so the stand-in has the code shapes the
patches target (``device = get_device('auto')`` that fails without nvidia-smi, the Trainer's DDP/cuda arguments,
25-32 loader workers, UBP's channel list) and reads what the runner writes the way UBP does: the config's
``data_dir``, ``<data_dir>/sub-XX/{train,test}.pt`` and ``<data_dir>/../Image_feature/DirectT/<name>_{mode}.pt``.
With ``UBP_CLONE=/path/to/clone`` (and omegaconf / pytorch_lightning importable) the real reference runs 2 epochs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_ubp_reference.py"

DATA_EEG = '''import os
import numpy as np
import torch


def get_device(gpu_ids):
    raise RuntimeError("nvidia-smi not found")


def load_eeg_data(config):
    train = EEGDataset(config, 'train')
    test = EEGDataset(config, 'test')
    loaders = [dict(data=train, num_workers=32), dict(data=test, num_workers=25)]
    inter = [dict(num_workers=25), dict(num_workers=32), dict(num_workers=32)]
    return loaders[0], loaders[1], loaders[1]


class EEGDataset:
    def __init__(self, config, mode):
        self.channels = CHANNELS
        self.selected_ch = config['data']['selected_ch']
        path = os.path.join(config['data']['data_dir'], config['data']['subjects'][0], f'{mode}.pt')
        data = torch.load(path, weights_only=False)
        idx = [self.channels.index(ch) for ch in self.selected_ch]
        self.eeg = torch.from_numpy(data['eeg'])[:, :, idx].mean(axis=1)
        self.img = data['img'][:, 0]
        cache = os.path.join(config['data']['data_dir'], '../Image_feature', 'DirectT', f"{config['name']}_{mode}.pt")
        if not os.path.exists(cache):
            self.vlmodel = open_clip.create_model_and_transforms('RN50', device=f"cuda:{get_device('auto')}")
        self.img_features = torch.load(cache, weights_only=False)['img_features']
        self.features = torch.stack([self.img_features[k] for k in self.img])
'''

MAIN = '''import argparse, json, os
import numpy as np
import torch
import yaml
from base.data_eeg import load_eeg_data, get_device

device = get_device('auto')


class DDPStrategy:
    def __init__(self, **kwargs):
        raise RuntimeError("DDP needs a GPU here")


def Trainer(**kwargs):
    assert kwargs == {'strategy': 'auto', 'devices': 1, 'accelerator': 'cpu'}, kwargs
    return kwargs


def main():
    p = argparse.ArgumentParser()
    for key in ('--config', '--dataset', '--subjects', '--exp_setting', '--brain_backbone', '--vision_backbone'):
        p.add_argument(key)
    p.add_argument('--seed', type=int)
    p.add_argument('--epoch', type=int)
    p.add_argument('--lr', type=float)
    opt = p.parse_args()
    config = yaml.safe_load(open(opt.config))
    config['name'] = f"{opt.dataset}_{opt.exp_setting}_baseline_{opt.brain_backbone}_{opt.vision_backbone}"
    config['data']['subjects'] = [opt.subjects]
    train, test, _ = load_eeg_data(config)
    trainer = Trainer(strategy=DDPStrategy(find_unused_parameters=False), devices=[device],accelerator='cuda')
    x, y = train['data'].eeg.flatten(1).double(), train['data'].features.double()
    w = torch.linalg.solve(x.T @ x + 1e3 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    pred = test['data'].eeg.flatten(1).double() @ w
    sim = torch.nn.functional.normalize(pred, dim=1) @ torch.nn.functional.normalize(test['data'].features.double(), dim=1).T
    hits = torch.arange(len(sim))
    top = sim.topk(5, dim=1).indices
    run = os.path.join(config['save_dir'], config['name'], f"{opt.subjects}_seed{opt.seed}")
    os.makedirs(os.path.join(run, 'checkpoints'), exist_ok=True)
    torch.save({'global_step': 3 * opt.epoch}, os.path.join(run, 'checkpoints', 'last.ckpt'))
    json.dump([{'test_loss': 1.0, 'test_top1_acc': (top[:, 0] == hits).double().mean().item(),
                'test_top5_acc': (top == hits[:, None]).any(1).double().mean().item()}],
              open(os.path.join(run, 'test_results.json'), 'w'))


if __name__ == "__main__":
    main()
'''

CONFIG = '''timesteps: [0,250]
name: "${dataset}_${exp_setting}_baseline_${brain_backbone}_${vision_backbone}"
data:
  data_dir: data/things-eeg/Preprocessed_data_250Hz_whiten
  selected_ch: ['P7', 'O1', 'Oz', 'O2']
  train_batch_size: 1024
save_dir: 'exp'
'''


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_ubp_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def channel_names(tiny_root: Path) -> list[str]:
    from bench.data.formats import read_eeg_file

    return read_eeg_file(tiny_root / "Preprocessed_data_250Hz" / "sub-01" / "preprocessed_eeg_test.npy").ch_names


def make_clone(folder: Path, channels: list[str], main: str = MAIN) -> Path:
    (folder / "base").mkdir(parents=True, exist_ok=True)
    (folder / "configs" / "eeg").mkdir(parents=True, exist_ok=True)
    (folder / "base" / "data_eeg.py").write_text(f"CHANNELS = None\n{DATA_EEG}".replace(
        "self.channels = CHANNELS", f"self.channels = {channels!r}"))
    (folder / "main.py").write_text(main)
    (folder / "configs" / "eeg" / "baseline.yaml").write_text(CONFIG)
    return folder


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_standin_runs_end_to_end_with_ubp_inputs_in_its_channel_order(tiny_root, tmp_path):
    channels = channel_names(tiny_root)[::-1]  # UBP's list in another order than the files': reordered on writing
    clone = make_clone(tmp_path / "clone", channels)
    before = {p: p.read_bytes() for p in clone.rglob("*") if p.is_file()}
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_script("--clone", str(clone), "--data-root", str(tiny_root), "--subject", "1", "--epochs", "4",
                      "--seed", "2", "--batch-size", "16", "--out", str(out), "--work-dir", str(work), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "ubp-reference_sub-01_seed-2_epochs-4.json").read_text())
    assert record["subject"] == 1 and record["seed"] == 2 and record["batch_size"] == 16
    assert 0 <= record["top1"] <= record["top5"] <= 100
    assert record["global_step"] == 12 and record["epochs_trained"] == 12 / np.ceil(record["n_train_images"] / 16)
    assert len(record["patches"]) == 5 and set(record["reference_sha256"]) == {
        "main.py", "base/data_eeg.py", "configs/eeg/baseline.yaml"}
    import torch

    from bench.data.formats import read_eeg_file

    source = read_eeg_file(tiny_root / "Preprocessed_data_250Hz" / "sub-01" / "preprocessed_eeg_training.npy")
    written = torch.load(work / "eeg" / "sub-01" / "train.pt", weights_only=False)
    np.testing.assert_array_equal(written["eeg"][:, :, 0], np.asarray(source.data.memmap())[:, :, -1])
    assert written["ch_names"] == channels and written["eeg"].shape[:2] == source.shape[:2]
    cache = torch.load(work / "Image_feature" / "DirectT" / "eeg_intra-subject_baseline_EEGProjectLayer_RN50_train.pt",
                       weights_only=False)
    assert list(cache["img_features"]) == list(written["img"][:, 0])
    assert {p: p.read_bytes() for p in clone.rglob("*") if p.is_file()} == before  # the clone is only read


@pytest.mark.parametrize("old, new, named", [
    ("accelerator='cuda'", "accelerator='gpu'", "Trainer accelerator"),
    ("device = get_device('auto')", "device = get_device('0')", "GPU pick"),
    ("devices=[device]", "devices=[device, 1]", "Trainer devices"),
])
def test_a_main_py_patch_that_no_longer_matches_is_refused(script, tmp_path, old, new, named):
    clone = make_clone(tmp_path / "clone", ["O1"], MAIN.replace(old, new))
    with pytest.raises(script.RefusedRun, match=f"{named}.*matched 0 time"):
        script.patched_sources(clone)


def test_worker_counts_and_leftover_cuda_are_checked(script, tmp_path):
    clone = make_clone(tmp_path / "clone", ["O1"])
    sources = script.patched_sources(clone)
    assert sources["base/data_eeg.py"].count("num_workers=0") == 5 and "num_workers=3" not in sources["base/data_eeg.py"]
    assert "accelerator='cpu'" in sources["main.py"] and "strategy='auto'" in sources["main.py"]
    (clone / "base" / "data_eeg.py").write_text(DATA_EEG + "extra = dict(num_workers=4)\n")
    with pytest.raises(script.RefusedRun, match="loader workers .* matched 6 time"):
        script.patched_sources(clone)
    make_clone(clone, ["O1"], MAIN.replace("return kwargs", "return torch.device('cuda')"))
    with pytest.raises(script.RefusedRun, match="CUDA use left after patching"):
        script.patched_sources(clone)


def test_a_data_root_without_a_channel_ubp_selects_is_refused(script, tiny_root, tmp_path):
    clone = make_clone(tmp_path / "clone", [*channel_names(tiny_root), "Xz9"])
    proc = run_script("--clone", str(clone), "--data-root", str(tiny_root), "--subject", "1", "--out",
                      str(tmp_path / "out"))
    assert proc.returncode == 2 and "lacks channels Xz9" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.environ.get("UBP_CLONE"), reason="set UBP_CLONE to a clone of Uncertainty-aware-Blur-Prior")
def test_real_reference_two_epochs_on_the_tiny_root(tiny_root, tmp_path):
    out = tmp_path / "out"
    proc = run_script("--clone", os.environ["UBP_CLONE"], "--data-root", str(tiny_root), "--subject", "1",
                      "--epochs", "2", "--seed", "0", "--batch-size", "32", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "ubp-reference_sub-01_seed-0_epochs-2.json").read_text())
    assert record["reference_commit"] and record["epochs_trained"] == 2 and 0 <= record["top1"] <= record["top5"]

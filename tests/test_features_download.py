"""`bench features` fetches missing weights through the model's library when online, and never when offline.

The online case is the real thing end to end: timm's published-weights config names the Hugging Face repository,
huggingface_hub downloads it from a loopback Hub (HF_ENDPOINT) into a fresh HF_HOME, and the features are computed
with those weights. Offline (--offline or HF_HUB_OFFLINE=1) refuses before any request reaches the server.
"""
import hashlib
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BENCH
from download_server import FakeServer

REPO = "timm/test_vit.r160_in1k"
THINGS: list[Path] = []  # the module fixture's folder, for the subprocess helper


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    root = tmp_path_factory.mktemp("things")
    rng = np.random.default_rng(0)
    for part, folders in (("training_images", ["00001_aardvark", "00002_bat1"]), ("test_images", ["00001_wok"])):
        for folder in folders:
            (root / part / folder).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / part / folder / f"{folder.split('_', 1)[1]}_01b.png")
    THINGS[:] = [root]
    return root


@pytest.fixture(scope="module")
def checkpoint():
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(5)
    return save(timm.create_model("test_vit", pretrained=False).state_dict())


def features(server, tmp_path, *extra, offline_env="0"):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env.update(HF_ENDPOINT=server.url, HF_HUB_OFFLINE=offline_env, HF_HOME=str(tmp_path / "hf"),
               HOME=str(tmp_path / "home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]))
    return subprocess.run([BENCH, "features", "--images", str(THINGS[0]), "--model", "timm:test_vit",
                           "--out", str(tmp_path / "f.npz"), "--device", "cpu", "--workers", "1", "--no-progress",
                           *extra], capture_output=True, text=True, timeout=300, env=env)


def test_online_downloads_through_huggingface_hub_into_its_cache(things, checkpoint, tmp_path):
    with FakeServer() as server:
        server.store.hf = {("models", REPO): {"model.safetensors": checkpoint, "config.json": b"{}"}}
        out = features(server, tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert server.store.served[f"hf:{REPO}/model.safetensors"] == len(checkpoint)
    cached = list((tmp_path / "hf" / "hub" / "models--timm--test_vit.r160_in1k").rglob("model.safetensors"))
    assert cached and cached[0].read_bytes() == checkpoint
    from bench.data.features import read_meta

    meta = read_meta(tmp_path / "f.npz")
    assert meta["weights"] == hashlib.sha256(checkpoint).hexdigest()
    assert meta["weights_source"].startswith(f"downloaded:hf:{REPO}/model.safetensors: {tmp_path / 'hf'}")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_refuses_before_any_request(things, checkpoint, tmp_path, how):
    with FakeServer() as server:
        server.store.hf = {("models", REPO): {"model.safetensors": checkpoint}}
        out = (features(server, tmp_path, "--offline") if how == "flag" else
               features(server, tmp_path, offline_env="1"))
        assert not server.store.requests
    assert out.returncode == 1 and "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "no weights for timm:test_vit" in err and "does not download offline" in err
    assert "--weights" in err and "timm.create_model('test_vit.r160_in1k', pretrained=True)" in err
    assert not (tmp_path / "f.npz").exists()


"""`bench data download` against a loopback server that answers like the OSF API and the Hugging Face Hub.

The served files are the tiny synthetic dataset in the published layouts (per-subject zips on OSF, the image set's
image_metadata.npy and image zips, ATM's Hugging Face tree with its .pt features), so what lands on disk goes through
`bench data check` and `bench train` unchanged.
"""
import io
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.data import download as download_mod
from bench.data.features import load_partition
from bench.data.formats import read_image_metadata
from conftest import BENCH
from download_server import FakeServer

runner = CliRunner()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def eeg_files(root: Path, subject: int) -> dict[str, bytes]:
    folder = root / "Preprocessed_data_250Hz" / f"sub-{subject:02d}"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def published(tiny_root):
    """The tiny dataset as each provider publishes it: {node or repo: {path: bytes}}."""
    meta = read_image_metadata(tiny_root / "image_metadata.npy")
    osf_eeg = {f"sub-{s:02d}.zip" if s == 1 else f"archives/sub-{s:02d}.zip":
               zip_bytes({f"sub-{s:02d}/{n}": b for n, b in eeg_files(tiny_root, s).items()}) for s in (1, 2)}
    osf_eeg["README.txt"] = b"not an archive this source needs"
    images = {"image_metadata.npy": (tiny_root / "image_metadata.npy").read_bytes(),
              # one archive with its folder inside, one without: both must end up as image_set/<name>/<concept>/...
              "training_images.zip": zip_bytes({f"training_images/{p}": p.encode() for p in meta.train_images}),
              "test_images.zip": zip_bytes({p: p.encode() for p in meta.test_images})}
    atm = {"README.md": b"# tiny\n"}
    for s in (1, 2):
        atm.update({f"Preprocessed_data_250Hz/sub-{s:02d}/{n}": b for n, b in eeg_files(tiny_root, s).items()})
    for part in ("train", "test"):
        feats = load_partition(tiny_root / "features.npz", part)
        buf = io.BytesIO()
        torch.save({"img_features": torch.from_numpy(feats.image), "text_features": torch.from_numpy(feats.text)}, buf)
        atm[f"ViT-H-14_features_{part}.pt"] = buf.getvalue()
    return {"anp5v": osf_eeg, "y63gw": images, "LidongYang/EEG_Image_decode": atm}


@pytest.fixture
def server(published, monkeypatch):
    with FakeServer() as srv:
        srv.store.osf = {node: dict(published[node]) for node in ("anp5v", "y63gw")}
        srv.store.hf = {("datasets", "LidongYang/EEG_Image_decode"): dict(published["LidongYang/EEG_Image_decode"])}
        monkeypatch.setenv("BENCH_OSF_API", f"{srv.url}/v2")
        yield srv


def bench(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def bench_main(*args):
    """Through bench.cli.main, which turns user errors into one line and exit 1."""
    from bench.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0


def test_osf_full_download_lays_out_what_bench_reads(server, published, tmp_path, capsys):
    to = tmp_path / "data"
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to)) == 0
    assert bench_main("data", "download", "things-eeg2-images", "--to", str(to)) == 0
    out = capsys.readouterr().out
    for s in (1, 2):
        arch = published["anp5v"]["sub-01.zip" if s == 1 else "archives/sub-02.zip"]
        with zipfile.ZipFile(io.BytesIO(arch)) as zf:
            for name in zf.namelist():
                assert (to / "preprocessed_data" / name).read_bytes() == zf.read(name)
    assert (to / "image_set" / "image_metadata.npy").read_bytes() == published["y63gw"]["image_metadata.npy"]
    meta = read_image_metadata(to / "image_set" / "image_metadata.npy")
    for part, files in (("training_images", meta.train_images), ("test_images", meta.test_images)):
        assert sorted(str(p.relative_to(to / "image_set" / part)) for p in (to / "image_set" / part).rglob("*.*")) \
            == sorted(files)
    assert not (to / "README.txt").exists() and server.store.served.get("osf:anp5v/README.txt") is None
    assert "ok: 2 subject(s)" not in out and "next step: no feature file" in out  # OSF brings no features
    assert not [p for p in (to / ".bench-download").rglob("*") if p.is_file() and p.name != "manifest.json"]

    served = dict(server.store.served)
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to)) == 0
    assert dict(server.store.served) == served  # installed files are skipped: nothing fetched again
    assert "0 of 2 file(s) to fetch" in capsys.readouterr().out


def test_subject_and_partition_subsets(server, tmp_path, capsys):
    to = tmp_path / "d"
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to), "--subjects", "2") == 0
    assert bench_main("data", "download", "things-eeg2-images", "--to", str(to), "--partitions", "test") == 0
    assert sorted(server.store.served) == ["osf:anp5v/archives/sub-02.zip", "osf:y63gw/image_metadata.npy",
                                           "osf:y63gw/test_images.zip"]
    assert [p.name for p in (to / "preprocessed_data").iterdir()] == ["sub-02"]
    assert bench_main("data", "download", "things-eeg2-images", "--to", str(to), "--dry-run", "--partitions",
                      "train") == 0
    assert "osf:y63gw/training_images.zip" not in server.store.served  # a dry run fetches nothing
    assert "1 of 2 file(s) to fetch" in capsys.readouterr().out


def test_interrupted_download_resumes_without_fetching_a_byte_twice(server, published, tmp_path, monkeypatch,
                                                                     capsys):
    to = tmp_path / "d"
    key = "osf:anp5v/sub-01.zip"
    size = len(published["anp5v"]["sub-01.zip"])
    server.store.cut[key] = 3_000_000
    monkeypatch.setattr(download_mod, "RETRIES", 1)  # the run gives up: the next command continues
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to), "--subjects", "1") == 1
    err = capsys.readouterr().err
    assert "received 3000000 of" in err and "run the same command again" in err
    assert (to / ".bench-download/things-eeg2-preprocessed/sub-01.zip.part").stat().st_size == 3_000_000
    assert not (to / "preprocessed_data").exists()
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to), "--dry-run", "--subjects",
                      "1") == 0
    assert "resume at 3.0 MB" in capsys.readouterr().out

    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to), "--subjects", "1") == 0
    assert server.store.served[key] == size
    assert [r for p, r in server.store.ranges if p == key] == [None, "bytes=3000000-"]
    assert (to / "preprocessed_data/sub-01/preprocessed_eeg_test.npy").is_file()

    # within one run, a dropped connection is continued at once
    monkeypatch.setattr(download_mod, "RETRIES", 3)
    key2 = "osf:anp5v/archives/sub-02.zip"
    server.store.cut[key2] = 1_000_000
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to)) == 0
    assert server.store.served[key2] == len(published["anp5v"]["archives/sub-02.zip"])


def test_corrupted_file_is_fetched_again_then_refused(server, published, tmp_path, capsys):
    to = tmp_path / "d"
    key = "osf:anp5v/sub-01.zip"
    size = len(published["anp5v"]["sub-01.zip"])
    server.store.corrupt[key] = 1
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to), "--subjects", "1") == 0
    assert server.store.served[key] == 2 * size
    with zipfile.ZipFile(io.BytesIO(published["anp5v"]["sub-01.zip"])) as zf:
        assert (to / "preprocessed_data/sub-01/preprocessed_eeg_training.npy").read_bytes() == \
            zf.read("sub-01/preprocessed_eeg_training.npy")

    to2 = tmp_path / "d2"
    server.store.corrupt[key] = 2
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(to2), "--subjects", "1") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "sub-01.zip" in err and "does not match the provider's" in err and "after fetching it twice" in err
    assert not (to2 / "preprocessed_data").exists()


def test_not_enough_disk_is_refused_with_the_numbers(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download_mod, "free_bytes", lambda folder: 100_000_000)
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(tmp_path / "d")) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "not enough disk space" in err and "0.10 GB is free" in err and "to fetch" in err
    assert not server.store.served and not (tmp_path / "d").exists()


def test_404_and_unreachable_host_are_one_clear_line(server, tmp_path, monkeypatch, capsys):
    del server.store.osf["y63gw"]
    assert bench_main("data", "download", "things-eeg2-images", "--to", str(tmp_path / "d")) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "/nodes/y63gw/files/osfstorage/: 404 Not Found" in err and "bench/data/sources.yaml" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("BENCH_OSF_API", f"http://127.0.0.1:{closed}/v2")
    assert bench_main("data", "download", "things-eeg2-preprocessed", "--to", str(tmp_path / "d")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach http://127.0.0.1:{closed}/v2/nodes/anp5v" in err
    assert "https://osf.io/anp5v/" in err and "by hand" in err


def test_unknown_source_and_bad_partitions(tmp_path, capsys):
    assert bench_main("data", "download", "things", "--to", str(tmp_path)) == 1
    assert "unknown source 'things'" in capsys.readouterr().err
    result = bench("data", "list-sources")
    assert result.exit_code == 0
    for name in ("things-eeg2-preprocessed", "things-eeg2-raw", "things-eeg2-images", "atm-hf", "ubp-hf"):
        assert name in result.output


def hf_env(server, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE",)}
    env.update(HF_ENDPOINT=server.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", BENCH_OSF_API=f"{server.url}/v2",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]))
    return env


def test_hugging_face_download_then_check_and_ridge_end_to_end(server, published, tmp_path):
    """huggingface_hub itself talks to the loopback Hub (HF_ENDPOINT): listing, HEAD, GET; we verify the hashes."""
    to, env = tmp_path / "data", hf_env(server, tmp_path)
    repo = "hf:LidongYang/EEG_Image_decode"
    server.store.corrupt[f"{repo}/ViT-H-14_features_train.pt"] = 1  # damaged once: fetched again, then right
    run = lambda *a: subprocess.run([BENCH, *a], capture_output=True, text=True, timeout=300, env=env)  # noqa: E731
    images = run("data", "download", "things-eeg2-images", "--to", str(to))
    assert images.returncode == 0, images.stdout + images.stderr
    hf = run("data", "download", "atm-hf", "--to", str(to), "--subjects", "1")
    assert hf.returncode == 0, hf.stdout + hf.stderr
    atm = published["LidongYang/EEG_Image_decode"]
    for path in ("Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy", "ViT-H-14_features_test.pt"):
        assert (to / path).read_bytes() == atm[path]
    assert not (to / "Preprocessed_data_250Hz/sub-02").exists() and not (to / "README.md").exists()
    assert server.store.served[f"{repo}/ViT-H-14_features_train.pt"] == 2 * len(atm["ViT-H-14_features_train.pt"])
    assert f"{repo}/Preprocessed_data_250Hz/sub-02/preprocessed_eeg_test.npy" not in server.store.served
    assert "ok: 1 subject(s) readable and consistent" in hf.stdout

    check = run("data", "check", "--data-root", str(to))
    assert check.returncode == 0, check.stdout + check.stderr
    train = run("train", "--method", "ridge", "--subject", "1", "--data-root", str(to), "--results-dir",
                str(tmp_path / "results"), "--set", "protocol.val_concepts=4", "--quiet")
    assert train.returncode == 0 and "top-1" in train.stdout, train.stdout + train.stderr

    served = dict(server.store.served)
    again = run("data", "download", "atm-hf", "--to", str(to), "--subjects", "1")
    assert again.returncode == 0 and dict(server.store.served) == served, again.stdout + again.stderr


def test_hugging_face_offline_and_missing_repo(server, tmp_path):
    env = hf_env(server, tmp_path)
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([BENCH, "data", "download", "atm-hf", "--to", str(tmp_path / "d")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 1 and "HF_HUB_OFFLINE is set" in out.stderr and "Traceback" not in out.stderr
    env["HF_HUB_OFFLINE"] = "0"
    server.store.hf.clear()
    out = subprocess.run([BENCH, "data", "download", "atm-hf", "--to", str(tmp_path / "d")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 1 and "404 Not Found" in out.stderr and "Traceback" not in out.stderr

"""Run a user's clone of UBP's reference code (EEGProject, UBP's "Vanilla" baseline) on any THINGS-EEG 250 Hz data
root, and record what it scores.

UBP (github.com/HaitaoWuTJU/Uncertainty-aware-Blur-Prior) trains with ``main.py --config configs/eeg/baseline.yaml``
(PyTorch Lightning): its data and feature paths come from that YAML config, so this script writes the config (the
clone's ``baseline.yaml`` with ``data.data_dir`` pointed at the work folder) and UBP's inputs from the data root:
per-subject ``{train,test}.pt`` dicts (EEG in UBP's 63-channel order, image path, concept text, label, session) and
the image-feature cache ``Image_feature/DirectT/<name>_{train,test}.pt`` (dicts keyed by image path and text) from the
feature file, so no image and no open_clip weights are needed. What stays hard-coded for the authors' machine (a GPU
chosen by ``nvidia-smi``, ``accelerator='cuda'``, DDP, 25-32 data-loader workers) is patched in memory, as
``run_nice_reference.py`` does for NICE: every pattern must match as often as it does at UBP 89d8b83, or the run is
refused; the clone is never written.

    python scripts/run_ubp_reference.py --clone ~/Uncertainty-aware-Blur-Prior --data-root /work/data --subject 1 \\
        --seed 0 --out results/fidelity-ubp [--epochs 50] [--batch-size 1024] [--lr 1e-4] [--threads 1]

The result, ``<out>/ubp-reference_sub-XX_seed-S_epochs-E.json``, holds UBP's own ``test_top1_acc`` /
``test_top5_acc`` (in %; cosine against the test images, the last checkpoint), the epochs it trained before its
early stopping on the training loss, wall and CPU time, the clone's commit and a fingerprint of the data.
See docs/fidelity.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_runner import (  # noqa: E402  (the runners' shared part, beside this file)
    Patch, RefusedRun, check_requirements, cli, exec_patched, fingerprint, launch, patch_file, provenance,
    subject_eeg_files, timed)

TESTED_COMMIT = "89d8b83"  # HaitaoWuTJU/Uncertainty-aware-Blur-Prior commit the patches were written against
MAIN, DATA_MODULE, CONFIG = "main.py", "base/data_eeg.py", "configs/eeg/baseline.yaml"
BRAIN, VISION, BLUR = "EEGProjectLayer", "RN50", "DirectT"  # scripts/exp.sh; baseline.yaml's blur_type (no blur)
VISION_DIM = 1024  # main.py pretrain_map['RN50']['z_dim']: the EEG embedding size, so the features' size
CHANNEL_LIST = re.compile(r"self\.channels = (\[[^\]]*\])")


@dataclass(frozen=True)
class Plan:
    """What the patched reference runs with."""

    config: str  # the YAML config written for this run
    argv: list[str]  # main.py's command line


def main_patches() -> list[Patch]:
    """main.py: the authors' GPU machine -> one CPU process (nothing else in the Trainer changes)."""
    return [
        # get_device('auto') parses nvidia-smi at import; the device only feeds devices=[device] below
        Patch("GPU pick `device = get_device('auto')`", r"^device = get_device\('auto'\)$", "device = 'cpu'"),
        Patch("Trainer strategy `DDPStrategy(...)`", r"strategy=DDPStrategy\(find_unused_parameters=False\)",
              "strategy='auto'"),
        Patch("Trainer devices `devices=[device]`", r"devices=\[device\]", "devices=1"),
        Patch("Trainer accelerator `accelerator='cuda'`", r"accelerator='cuda'", "accelerator='cpu'"),
    ]


def data_patches() -> list[Patch]:
    """base/data_eeg.py: 25-32 loader worker processes -> none. The sampler draws its order in the main process
    either way (and the loader's base seed is drawn either way), so batches and their order are unchanged."""
    return [Patch("loader workers `num_workers=N`", r"num_workers=\d+", "num_workers=0", count=5)]


def patched_sources(clone: Path) -> dict[str, str]:
    """{relative file: patched source} of main.py and base/data_eeg.py; the files are only read. data_eeg.py's only
    CUDA uses are in its open_clip feature-extraction branch, which the feature cache this script writes skips
    (:func:`write_feature_cache` checks the names), so its CUDA check is left to that."""
    what, against = "github.com/HaitaoWuTJU/Uncertainty-aware-Blur-Prior", f"UBP {TESTED_COMMIT}"
    return {MAIN: patch_file(clone / MAIN, main_patches(), against, what),
            DATA_MODULE: patch_file(clone / DATA_MODULE, data_patches(), against, what, check_cuda=False)}


def ubp_channels(clone: Path) -> list[str]:
    """UBP's 63-channel order (``EEGDataset.channels``), read from the clone: selected_ch indexes into it."""
    found = CHANNEL_LIST.findall((clone / DATA_MODULE).read_text())
    if len(found) != 1:
        raise RefusedRun(f"{clone / DATA_MODULE}: expected one `self.channels = [...]` list, found {len(found)}")
    return list(ast.literal_eval(found[0]))


# --- UBP's inputs from the data root ------------------------------------------------------------------------------
def read_subject(path: Path, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(EEG (images, repetitions, 63, T) in UBP's channel order, float32; times) of one subject file."""
    from bench.data.formats import read_eeg_file

    eeg = read_eeg_file(path)
    missing = [c for c in channels if c not in eeg.ch_names]
    if missing:
        raise RefusedRun(f"{path}: lacks channels {', '.join(missing[:8])} of UBP's 63-channel list")
    order = [eeg.ch_names.index(c) for c in channels]
    data = eeg.data.memmap() if hasattr(eeg.data, "memmap") else eeg.data  # a DiskArray stays on disk till here
    return np.asarray(data)[:, :, order].astype(np.float32), eeg.times


def write_inputs(data_root: Path, subject: int, features: Path, channels: list[str], work: Path,
                 name: str) -> tuple[list[Path], int]:
    """UBP's per-subject train.pt / test.pt and its feature cache for ``name``, written under ``work``; returns the
    files read (for the fingerprint) and the training images. Image keys are the data root's relative image paths; text keys concept names."""
    import torch

    from bench.data.dataset import ThingsEEG
    from bench.data.features import load_partition_any

    ds = ThingsEEG.open(data_root)
    _, eeg_files = subject_eeg_files(data_root, subject)
    cache = work / "Image_feature" / BLUR
    cache.mkdir(parents=True, exist_ok=True)
    n_rows = 0
    for mode, eeg_file, part in (("train", eeg_files[0], "train"), ("test", eeg_files[1], "test")):
        eeg, times = read_subject(eeg_file, channels)
        feats = load_partition_any(features, part)
        images = ds.images.train_images if part == "train" else ds.images.test_images
        concepts = ds.train_concepts if part == "train" else ds.test_concepts
        if not len(images) == len(eeg) == len(feats.image) or feats.image.shape[1] != VISION_DIM:
            raise RefusedRun(f"{data_root}: {mode}: {len(images)} images listed, {len(eeg)} EEG rows, features "
                             f"{feats.image.shape} (UBP's {VISION} needs {VISION_DIM}-d)")
        keys = [str(img) for img in images]  # as the image list names them
        concept = np.repeat(np.arange(len(concepts)), len(images) // len(concepts))
        reps = eeg.shape[1]
        (work / "eeg" / f"sub-{subject:02d}").mkdir(parents=True, exist_ok=True)
        torch.save({"eeg": eeg, "label": np.repeat(concept[:, None], reps, 1),
                    "img": np.repeat(np.array(keys, dtype=object)[:, None], reps, 1),
                    "text": np.repeat(np.array([concepts[c] for c in concept], dtype=object)[:, None], reps, 1),
                    "session": np.zeros((len(eeg), reps), dtype=np.int64), "ch_names": channels, "times": times},
                   work / "eeg" / f"sub-{subject:02d}" / f"{mode}.pt")
        # the baseline's loss never reads text features; NaN rows make any use of them visible
        text = {c: torch.full((VISION_DIM,), float("nan")) for c in concepts}
        torch.save({"img_features": {k: torch.from_numpy(np.asarray(f, dtype=np.float32))
                                     for k, f in zip(keys, feats.image)}, "text_features": text},
                   cache / f"{name}_{mode}.pt")
        n_rows = n_rows if mode == "test" else len(eeg)
    return eeg_files + [Path(features)], n_rows


def write_config(clone: Path, work: Path, batch_size: int) -> tuple[Path, str]:
    """(the clone's baseline.yaml with data.data_dir -> work/eeg and its training batch size, the run's name)."""
    import yaml

    cfg = yaml.safe_load((clone / CONFIG).read_text())
    try:
        cfg["data"]["data_dir"] = str(work / "eeg")
        cfg["data"]["train_batch_size"] = batch_size
        cfg["save_dir"] = str(work / "exp")
    except (KeyError, TypeError) as exc:
        raise RefusedRun(f"{clone / CONFIG}: no data.data_dir / data.train_batch_size ({exc})") from exc
    path = work / "baseline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # main.py: update_config copies the command line into the config; its name interpolates these keys
    keys = {"dataset": "eeg", "exp_setting": "intra-subject", "brain_backbone": BRAIN, "vision_backbone": VISION}
    name = re.sub(r"\$\{(\w+)\}", lambda m: str(keys.get(m.group(1), m.group(0))), str(cfg.get("name", "")))
    if "$" in name or not name:
        raise RefusedRun(f"{clone / CONFIG}: name {cfg.get('name')!r} uses keys other than {', '.join(keys)}")
    return path, name


# --- the run -------------------------------------------------------------------------------------------------------
def run_child(spec_file: str) -> int:
    """Child side: patched base/data_eeg.py and main.py executed in memory, main() timed (cwd = the work folder)."""
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    clone = Path(spec["clone"])
    sources = patched_sources(clone)
    sys.path.insert(0, str(clone))
    __import__("base")  # the clone's namespace package, so that base.data_eeg below is its submodule
    exec_patched(clone / DATA_MODULE, sources[DATA_MODULE], "base.data_eeg", search_path=clone)
    module = exec_patched(clone / MAIN, sources[MAIN], "ubp_main", search_path=clone)
    sys.argv = [str(clone / MAIN), *spec["argv"]]
    timing = timed(module.main)
    Path(spec["child_result"]).write_text(json.dumps(timing))
    return 0


def read_results(work: Path, subject: int, seed: int, name: str, steps_per_epoch: int) -> dict:
    """UBP's test_results.json (fractions -> %) and the epochs it trained (from its last checkpoint's step count)."""
    import torch

    run_dir = work / "exp" / name / f"sub-{subject:02d}_seed{seed}"
    results, last = run_dir / "test_results.json", run_dir / "checkpoints" / "last.ckpt"
    if not results.is_file() or not last.is_file():
        raise RefusedRun(f"{run_dir}: no test_results.json or checkpoints/last.ckpt; the run did not finish")
    scores = json.loads(results.read_text())[0]
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    return {"top1": round(100 * scores["test_top1_acc"], 4), "top5": round(100 * scores["test_top5_acc"], 4),
            "test_loss": scores["test_loss"], "epochs_trained": step / steps_per_epoch, "global_step": step}


def run_reference(args: argparse.Namespace, work: Path) -> dict:
    """Write UBP's inputs and config, patch (refusing before any training if a pattern is gone), run, collect."""
    clone = Path(args.clone).expanduser().resolve()
    data_root = Path(args.data_root).expanduser().resolve()
    sources = patched_sources(clone)
    for rel, source in sources.items():
        check_requirements(clone, source, rel)  # fail here, not in the child
    from bench.data.features import find_feature_file

    features = Path(args.features).expanduser() if args.features else find_feature_file([data_root])
    if features is None:
        raise RefusedRun(f"{data_root}: no feature file found; pass --features FILE")
    subject_eeg_files(data_root, args.subject)
    config, name = write_config(clone, work, args.batch_size)
    read, n_train = write_inputs(data_root, args.subject, features, ubp_channels(clone), work, name)
    argv = ["--config", str(config), "--dataset", "eeg", "--subjects", f"sub-{args.subject:02d}", "--seed",
            str(args.seed), "--exp_setting", "intra-subject", "--brain_backbone", BRAIN, "--vision_backbone", VISION,
            "--epoch", str(args.epochs), "--lr", str(args.lr)]
    spec = {"clone": str(clone), "plan": asdict(Plan(str(config), argv)), "argv": argv, "threads": args.threads,
            "child_result": str(work / "child.json")}
    load_before = os.getloadavg()
    timing = launch(__file__, spec, work, args.threads, args.quiet)
    scores = read_results(work, args.subject, args.seed, name, math.ceil(n_train / args.batch_size))
    return {
        "reference": "HaitaoWuTJU/Uncertainty-aware-Blur-Prior main.py (configs/eeg/baseline.yaml, EEGProjectLayer)",
        **provenance(clone, [MAIN, DATA_MODULE, CONFIG], load_before, timing),
        "subject": args.subject, "epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size,
        "lr": args.lr, **scores, "units": "percent", "data_root": str(data_root), "features": str(features),
        "n_train_images": n_train, "data_fingerprint": fingerprint(read),
        "patches": [p.name for p in main_patches() + data_patches()],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clone", required=True, help="a clone of github.com/HaitaoWuTJU/Uncertainty-aware-Blur-Prior")
    p.add_argument("--data-root", required=True, help="THINGS-EEG 250 Hz data root (Preprocessed_data_250Hz/...)")
    p.add_argument("--subject", type=int, required=True)
    p.add_argument("--epochs", type=int, default=50, help="main.py --epoch (its default: 50)")
    p.add_argument("--seed", type=int, default=0, help="main.py --seed (seed_everything)")
    p.add_argument("--lr", type=float, default=1e-4, help="main.py --lr (intra-subject: 1e-4)")
    p.add_argument("--batch-size", type=int, default=1024, help="data.train_batch_size (baseline.yaml: 1024)")
    p.add_argument("--features", help="feature file (default: the data root's features.npz)")
    p.add_argument("--out", required=True, help="folder for the JSON result")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in the reference run (default 1)")
    p.add_argument("--work-dir", help="keep the work folder here (default: a temporary folder, removed on success)")
    p.add_argument("--quiet", action="store_true", help="do not echo the reference's output")
    args = p.parse_args(argv)
    if args.subject < 1 or args.epochs < 1 or args.batch_size < 1 or args.threads < 1 or args.lr <= 0:
        p.error("--subject, --epochs, --batch-size, --threads must be at least 1 and --lr positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "ubp-reference", run_child, parse_args, run_reference)


if __name__ == "__main__":
    sys.exit(main())

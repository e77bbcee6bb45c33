"""Run a user's clone of the NICE reference code on any THINGS-EEG 250 Hz data root, and record what it scores.

NICE's only training script, ``nice_stand.py`` (github.com/eeyhsong/NICE-EEG), hard-codes its machine: GPU 6, the
authors' home-directory paths, CUDA tensors, an unseeded seed, 200 test concepts, 740 validation images and 768-d
CLIP ViT-L/14 features. This script runs that file *as it is* (its model, loss, per-sample DataLoader, validation
and test) after patching exactly those values in memory: the clone is never edited and no modified copy is written.
Each patch is a regular expression on the source text that must match the number of times it does in the
reference (commit a7709d8); if the clone's code no longer has that shape the run is refused, naming the pattern.

    python scripts/run_nice_reference.py --clone ~/NICE-EEG --data-root /work/data --subject 1 --epochs 40 \\
        --seed 0 --out results/fidelity [--batch-size 64] [--val-images N] [--threads 1]
    # a real data root: point at NICE's own feature folder (clip_feature_maps_*.npy, center_clip.npy)
    python scripts/run_nice_reference.py --clone ~/NICE-EEG --data-root /data/things-eeg \\
        --features-dir ~/NICE-EEG/dnn_feature --subject 1 --epochs 200 --seed 0 --out results/fidelity

Without ``--features-dir`` the data root's feature file (our ``features.npz``, as ``bench synth`` writes; or
``--features FILE`` in any format ``bench`` reads) is written into a work folder in NICE's layouts: training
(N, 1, D), test (n_test, 1, D) and concept centres (n_test, D), which NICE scores with ``100·ê·c`` (unnormalised
centres). The reference then runs in a child process on the CPU (``CUDA_VISIBLE_DEVICES=""``), in the work folder,
so its relative ``./model/`` checkpoints and its open log file stay there. Its test line in
``log_subject<N>.txt`` is parsed into ``<out>/nice-reference_sub-XX_seed-S_epochs-E.json``
(top-1/3/5 in %, wall time, reference commit, data fingerprint); the log is copied beside it.

The reference needs what it imports (``einops`` and ``pandas`` besides torch and numpy); a missing one is named
before anything runs.
See docs/fidelity.md for the measured comparison with ``bench run --method nice``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_runner import (  # noqa: E402  (the runners' shared part, beside this file)
    Patch, RefusedRun, check_requirements, cli, exec_patched, fingerprint, launch, patch_file, provenance,
    subject_eeg_files, timed)

REFERENCE_FILE = "nice_stand.py"
TESTED_COMMIT = "a7709d8"  # eeyhsong/NICE-EEG commit whose code shapes the patches below were written against
DNN = "clip"  # nice_stand.py --dnn default: file names clip_feature_maps_{training,test}.npy and center_clip.npy
PAPER_TRAIN_IMAGES, PAPER_VAL_IMAGES = 16540, 740
RESULT_LINE = re.compile(r"The test Top1-([0-9.]+), Top3-([0-9.]+), Top5-([0-9.]+)")
BEST_EPOCH_LINE = re.compile(r"The best epoch is: (\d+)")


@dataclass(frozen=True)
class Plan:
    """The values the patched reference runs with (paths end with '/' because nice_stand.py concatenates)."""

    subject: int
    eeg_dir: str
    feature_dir: str
    result_dir: str
    n_test: int
    n_val: int
    dim: int


def reference_patches(plan: Plan) -> list[Patch]:
    """What nice_stand.py hard-codes for the authors' machine, and what it becomes for this run."""
    return [
        # CUDA_VISIBLE_DEVICES is set from this list at import, and DataParallel gets one device per entry
        Patch("GPU list `gpus = [...]`", r"^gpus = \[[^\]\n]*\]", "gpus = []"),
        Patch("result path `result_path = ...`", r"^result_path = .*$", f"result_path = {plan.result_dir!r}"),
        Patch("EEG path `self.eeg_data_path = ...`", r"self\.eeg_data_path = .*$",
              f"self.eeg_data_path = {plan.eeg_dir!r}"),
        Patch("feature path `self.img_data_path = ...`", r"self\.img_data_path = .*$",
              f"self.img_data_path = {plan.feature_dir!r}"),
        Patch("centre path `self.test_center_path = ...`", r"self\.test_center_path = .*$",
              f"self.test_center_path = {plan.feature_dir!r}"),
        Patch("CUDA float type `torch.cuda.FloatTensor`", r"torch\.cuda\.FloatTensor", "torch.FloatTensor"),
        Patch("CUDA long type `torch.cuda.LongTensor`", r"torch\.cuda\.LongTensor", "torch.LongTensor"),
        Patch("`.cuda()` calls", r"\.cuda\(\)", "", count=None),
        # NICE draws its seed from the unseeded global RNG; the given --seed is used as the seed itself
        Patch("unseeded seed `np.random.randint(args.seed)`", r"np\.random\.randint\(args\.seed\)", "args.seed"),
        Patch("subject loop `for i in range(num_sub):`", r"for i in range\(num_sub\):",
              f"for i in [{plan.subject - 1}]:"),
        Patch("200 test labels `np.arange(200)`", r"test_label = np\.arange\(200\)",
              f"test_label = np.arange({plan.n_test})"),
        Patch("740 validation images `[:740]`", r"\[:740\]", f"[:{plan.n_val}]", count=2),
        Patch("740 validation images `[740:]`", r"\[740:\]", f"[{plan.n_val}:]", count=2),
        # the projectors default to CLIP ViT-L/14's 768 dimensions; a no-op at D = 768
        Patch("EEG projector `Proj_eeg()`", r"Proj_eeg\(\)", f"Proj_eeg(proj_dim={plan.dim})"),
        Patch("image projector `Proj_img()`", r"Proj_img\(\)",
              f"Proj_img(embedding_dim={plan.dim}, proj_dim={plan.dim})"),
    ]


def patched_reference(clone: Path, plan: Plan) -> tuple[Path, str]:
    """(path of nice_stand.py, its patched source); the file itself is only read."""
    path = clone / REFERENCE_FILE
    return path, patch_file(path, reference_patches(plan), f"NICE-EEG {TESTED_COMMIT}",
                            "github.com/eeyhsong/NICE-EEG")


# --- the data root and the feature files the reference reads ---------------------------------------------------------
def nice_feature_files(folder: Path) -> list[Path]:
    return [folder / f"{DNN}_feature_maps_training.npy", folder / f"{DNN}_feature_maps_test.npy",
            folder / f"center_{DNN}.npy"]


def write_nice_features(features: Path, out_dir: Path) -> list[Path]:
    """Our feature file (or any format bench reads) in NICE's layouts: (N, 1, D), (n_test, 1, D), centres (n, D)."""
    from bench.data.features import load_partition_any

    train, test = load_partition_any(features, "train"), load_partition_any(features, "test")
    if test.centroid is None:
        raise RefusedRun(f"{features}: no test concept centres (test_centroid); NICE scores against concept centres, "
                         f"so it cannot be run on this feature file")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = nice_feature_files(out_dir)
    for path, array in zip(files, (train.image[:, None, :], test.image[:, None, :], test.centroid)):
        np.save(path, np.ascontiguousarray(array, dtype=np.float32))
    return files


def feature_shapes(files: list[Path]) -> tuple[int, int, int]:
    """(training rows, test rows, dim) of NICE's three files, from their headers; refuses inconsistent files."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RefusedRun(f"NICE feature files missing: {', '.join(missing)}")
    train, test, centre = (np.load(f, mmap_mode="r").shape for f in files)
    if len(train) != 3 or len(test) != 3 or train[1] != 1 or test[1] != 1 or len(centre) != 2:
        raise RefusedRun(f"{files[0].parent}: expected training (N, 1, D), test (n, 1, D) and centres (n, D); found "
                         f"{train}, {test} and {centre}")
    if not train[2] == test[2] == centre[1] or test[0] != centre[0]:
        raise RefusedRun(f"{files[0].parent}: training {train}, test {test} and centres {centre} disagree in "
                         f"dimension or test concepts")
    return train[0], test[0], train[2]


def validation_images(n_train: int, requested: int | None) -> int:
    """NICE holds out 740 of 16,540 training images; on another size, the same fraction unless --val-images says."""
    if requested is not None:
        n_val = requested
    elif n_train == PAPER_TRAIN_IMAGES:
        n_val = PAPER_VAL_IMAGES
    else:
        n_val = max(1, round(n_train * PAPER_VAL_IMAGES / PAPER_TRAIN_IMAGES))
    if not 1 <= n_val < n_train:
        raise RefusedRun(f"--val-images {n_val}: must be at least 1 and below the {n_train} training images")
    return n_val


# --- the run: a child process executes the patched source, the parent reads the reference's log -------------------
def load_reference_module(clone: Path, plan: Plan) -> types.ModuleType:
    """The patched nice_stand.py executed as module ``nice_stand`` (its module level sets CUDA_VISIBLE_DEVICES)."""
    return exec_patched(*patched_reference(clone, plan), "nice_stand")


def add_image_test(module: types.ModuleType, sink: dict) -> None:
    """Wrap ``IE.train`` so that, after NICE's own training and test have run unchanged, the same final model (its
    modules as ``train()`` leaves them: the last epoch, since the reload loads nothing) is scored a second time in
    memory: by cosine against the test *images* (the honest number) and by NICE's dot against the centres (which must
    reproduce NICE's own test, or the parent refuses the run). Nothing NICE computes is changed or reordered."""
    trainer = getattr(module, "IE", None)
    if trainer is None or not callable(getattr(trainer, "train", None)):
        raise RefusedRun(f"{getattr(module, '__file__', module.__name__)}: no class IE with a train() method; the "
                         f"image test cannot be added")
    original = trainer.train

    def train(self):
        result = original(self)
        sink.update(image_test(self))
        return result

    trainer.train = train


def image_test(ie) -> dict:
    """Top-1/5 of NICE's final model against the test images (cosine) and the centres (``ê·c``), with NICE's own
    loaders (``get_eeg_data``, ``get_image_data``) and centre file; the EEG embeddings for geometry checks."""
    import torch

    from bench.evaluate import cosine_similarity, dot_similarity, rank_counts

    _, _, test_eeg, _ = ie.get_eeg_data()
    _, test_image = ie.get_image_data()
    centre = np.load(ie.test_center_path + "center_" + ie.args.dnn + ".npy", allow_pickle=True)
    ie.Enc_eeg.eval()
    ie.Proj_eeg.eval()
    with torch.no_grad():  # eval mode: no dropout draw, so nothing of NICE's random streams is used
        emb = ie.Proj_eeg(ie.Enc_eeg(torch.from_numpy(np.asarray(test_eeg)).float())).double().numpy()
    fold = np.zeros(len(emb), dtype=np.int64)
    image = rank_counts(cosine_similarity(emb, np.asarray(test_image, dtype=np.float64)), fold)
    centres = rank_counts(dot_similarity(emb, np.asarray(centre, dtype=np.float64)), fold)
    common = centre.mean(0) / np.linalg.norm(centre.mean(0))  # the centres' shared direction
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.save("test_embedding.npy", emb.astype(np.float32))  # cwd = the work folder
    return {"top1_image": image.topk(1), "top5_image": image.topk(5), "top1_centre_check": centres.topk(1),
            "top5_centre_check": centres.topk(5), "embedding_common_cos": float((unit @ common).mean())}


def run_child(spec_file: str) -> int:
    """Child side: compile the patched nice_stand.py in memory, run its main() and time it (cwd = the work folder)."""
    spec = json.loads(Path(spec_file).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    module = load_reference_module(Path(spec["clone"]), Plan(**spec["plan"]))
    second_pass: dict = {}
    if spec["image_test"]:
        add_image_test(module, second_pass)
    sys.argv = [module.__file__, *spec["argv"]]
    timing = timed(module.main)
    gc.collect()  # IE never closes its log file; collecting the instance flushes it before the parent reads it
    Path(spec["child_result"]).write_text(json.dumps({**timing, **second_pass}))
    return 0


def read_reference_log(log: Path) -> dict:
    """NICE's final 'The test Top1-…, Top3-…, Top5-…' line (fractions) as percentages, and its best-val epoch."""
    if not log.is_file():
        raise RefusedRun(f"the reference wrote no {log}")
    text = log.read_text()
    hits, best = RESULT_LINE.findall(text), BEST_EPOCH_LINE.findall(text)
    if not hits:
        raise RefusedRun(f"{log}: no 'The test Top1-…, Top3-…, Top5-…' line; the run did not finish its test")
    top1, top3, top5 = (round(100 * float(v), 4) for v in hits[-1])
    return {"top1": top1, "top3": top3, "top5": top5, "best_val_epoch": int(best[-1]) if best else None,
            "epochs_logged": len(re.findall(r"^Epoch \d+:", text, flags=re.MULTILINE))}


SECOND_PASS_KEYS = ("top1_image", "top5_image", "embedding_common_cos")


def second_pass_scores(child: dict, scores: dict) -> dict:
    """The image test's numbers, once its centre scores are checked to be NICE's own (the same model was scored)."""
    missing = [k for k in ("top1_centre_check", "top5_centre_check", *SECOND_PASS_KEYS) if k not in child]
    if missing:
        raise RefusedRun(f"the image test reported no {', '.join(missing)}: IE.train() did not return to it")
    for k in (1, 5):
        if abs(child[f"top{k}_centre_check"] - scores[f"top{k}"]) > 1e-3:  # the log keeps 6 decimals
            raise RefusedRun(f"the image test's top-{k} on the centres ({child[f'top{k}_centre_check']:.2f} %) is not "
                             f"NICE's own ({scores[f'top{k}']:.2f} %): it did not score the model NICE tested")
    return {k: round(child[k], 4) for k in SECOND_PASS_KEYS}


def prepare(args: argparse.Namespace, work: Path) -> tuple[Plan, list[Path], list[Path]]:
    """The plan (paths, sizes) for this run, the subject's EEG files and the NICE feature files it will read."""
    data_root = Path(args.data_root).expanduser().resolve()
    eeg_dir, eeg_files = subject_eeg_files(data_root, args.subject)
    if args.features_dir:
        feature_dir = Path(args.features_dir).expanduser().resolve()
        files = nice_feature_files(feature_dir)
    else:
        from bench.data.features import find_feature_file

        source = Path(args.features).expanduser() if args.features else find_feature_file([data_root])
        if source is None:
            raise RefusedRun(f"{data_root}: no feature file found; pass --features FILE or --features-dir DIR")
        feature_dir = work / "dnn_feature"
        files = write_nice_features(source, feature_dir)
    n_train, n_test, dim = feature_shapes(files)
    plan = Plan(subject=args.subject, eeg_dir=f"{eeg_dir}/", feature_dir=f"{feature_dir}/",
                result_dir=f"{work / 'results'}/", n_test=n_test, n_val=validation_images(n_train, args.val_images),
                dim=dim)
    return plan, eeg_files, files


def run_reference(args: argparse.Namespace, work: Path) -> dict:
    """Prepare, patch (refusing before any training if a pattern is gone), run, and collect one result record."""
    clone = Path(args.clone).expanduser().resolve()
    plan, eeg_files, feature_files = prepare(args, work)
    check_requirements(clone, patched_reference(clone, plan)[1], REFERENCE_FILE)  # fail here, not in the child
    for sub in ("model", "results"):  # nice_stand.py saves to ./model/ and opens its log in result_path
        (work / sub).mkdir(exist_ok=True)
    argv = ["--epoch", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    spec = {"clone": str(clone), "plan": asdict(plan), "argv": argv, "threads": args.threads,
            "child_result": str(work / "child.json"), "image_test": not args.no_image_test}
    load_before = os.getloadavg()
    timing = launch(__file__, spec, work, args.threads, args.quiet)
    scores = read_reference_log(work / "results" / f"log_subject{args.subject}.txt")
    second = second_pass_scores(timing, scores) if spec["image_test"] else {}
    return {
        "reference": "eeyhsong/NICE-EEG nice_stand.py", **provenance(clone, [REFERENCE_FILE], load_before, timing),
        "subject": args.subject, "epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size,
        **scores, **second, "units": "percent",
        "data_root": str(Path(args.data_root).expanduser().resolve()),
        "features": str(Path(args.features_dir or args.features or plan.feature_dir)),
        "n_train_images": feature_shapes(feature_files)[0], "val_images": plan.n_val, "n_test": plan.n_test,
        "feature_dim": plan.dim, "data_fingerprint": fingerprint(eeg_files + feature_files),
        "patches": [p.name for p in reference_patches(plan)],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clone", required=True, help="a clone of github.com/eeyhsong/NICE-EEG (only read)")
    p.add_argument("--data-root", required=True, help="THINGS-EEG 250 Hz data root (Preprocessed_data_250Hz/...)")
    p.add_argument("--subject", type=int, required=True)
    p.add_argument("--epochs", type=int, default=200, help="nice_stand.py --epoch (its default: 200)")
    p.add_argument("--seed", type=int, default=0, help="the seed itself (NICE draws one from an unseeded RNG)")
    p.add_argument("--out", required=True, help="folder for the JSON result and the reference's log")
    p.add_argument("--batch-size", type=int, default=1000, help="nice_stand.py --batch-size (its default: 1000)")
    features = p.add_mutually_exclusive_group()
    features.add_argument("--features", help="feature file to convert (default: the data root's features.npz)")
    features.add_argument("--features-dir", help="a folder that already holds NICE's clip_feature_maps_training.npy, "
                                                 "clip_feature_maps_test.npy and center_clip.npy (used as they are)")
    p.add_argument("--val-images", type=int, help="validation images held out (NICE: 740 of 16,540; default: 740 "
                                                  "on that size, else the same fraction of the training images)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in the reference run (default 1)")
    p.add_argument("--work-dir", help="keep the work folder here (default: a temporary folder, removed on success)")
    p.add_argument("--quiet", action="store_true", help="do not echo the reference's output")
    p.add_argument("--no-image-test", action="store_true",
                   help="skip the second, in-memory test of NICE's final model against the test images (top1_image)")
    args = p.parse_args(argv)
    if args.subject < 1 or args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--subject, --epochs, --batch-size and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    def keep(args: argparse.Namespace) -> dict[str, str]:  # NICE's log; the test EEG embeddings for geometry checks
        return {f"results/log_subject{args.subject}.txt": ".log", "test_embedding.npy": ".test-embedding.npy"}

    return cli(argv, "nice-reference", run_child, parse_args, run_reference, keep=keep)


if __name__ == "__main__":
    sys.exit(main())

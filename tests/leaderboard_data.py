"""A fixed, hand-shaped set of run records for the leaderboard tests (golden files are built from it).

intra: subjects 1-8 × seeds 0,1 for nice, atm, mcdb and mcdb's four ablation variants, except that
  atm sub-02 seed 0 FAILED and atm sub-03 seed 1 is MISSING (never ran);
inter: nice and mcdb, subjects 1-4, seed 0 only.
The intra mcdb records carry MCDB's ablation declaration, as `bench run --ablation` writes it; the inter ones do not.
Scores are a fixed formula of (method, subject, seed) so every number in the goldens can be checked by hand.
Every record stands for a run on real THINGS-EEG with 200 test images (its provenance ``data`` block says so), so the
literature rows of reported.csv stand beside them.
mcdb beats nice and atm on every subject (significant after Holm with 8 subjects); atm − nice changes sign
across subjects (not significant).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.records import COMPLETED, FAILED, RunRecord, RunSpec

REPORTED_CSV = Path(__file__).parent / "fixtures" / "leaderboard" / "reported.csv"

# method (variant) → base intra top-1; subjects add a fixed offset, seed 1 adds +1.0
INTRA = {("nice", None): 14.0, ("atm", None): 15.0, ("mcdb", "base"): 18.0, ("mcdb", "+text"): 21.0,
         ("mcdb", "+adapter"): 22.5, ("mcdb", "+mcdb"): 24.0, ("mcdb", None): 25.0}
INTER = {("nice", None): 5.0, ("mcdb", None): 8.0}
#: what `bench run --ablation` copies from the MCDB class into each spec it expands
MCDB_ABLATION = {"order": ["base", "+text", "+adapter", "+mcdb"], "full_label": "+spr (full)"}
#: the provenance ``data`` block of a run on real THINGS-EEG (what `bench.provenance.collect` writes)
REAL_DATA = {"synthetic": False, "n_test_images": 200}
SUBJECT_OFFSET = {1: 0.0, 2: -2.0, 3: 3.0, 4: 1.5, 5: -1.0, 6: 2.0, 7: 0.5, 8: -3.0}
# Per-method wobble so that paired differences are not constant across subjects (their std must not be 0).
WOBBLE = {"nice": (0.0, 0.4, -0.2, 0.1, 0.9, -0.6, 0.3, 0.0),
          "atm": (0.3, -2.0, -0.5, 0.6, -1.5, 0.2, -1.8, 1.0),
          "mcdb": (-0.2, 0.5, 0.0, 0.8, -0.4, 0.3, 0.1, -0.3)}


def spec(method, variant, protocol, subject, seed):
    config = {"method": {"name": method, "variant": variant}, "train": {"epochs": 3, "lr": 3e-4},
              "protocol": {"name": protocol}}
    ablation = MCDB_ABLATION if (method, protocol) == ("mcdb", "intra") else None
    return RunSpec(method=method, config=config, protocol=protocol, subject=subject, seed=seed,
                   data_fingerprint="synthetic-fixture", variant=variant, ablation=ablation)


def completed(method, variant, protocol, subject, seed, base, data=REAL_DATA):
    top1 = round(base + SUBJECT_OFFSET[subject] + WOBBLE[method][subject - 1] + (1.0 if seed else 0.0), 2)
    top5 = round(min(100.0, 2.2 * top1 + 5.0), 2)
    kway = {"2": {"top1": round(min(100.0, 70 + top1), 2)}, "4": {"top1": round(min(100.0, 50 + top1), 2)},
            "10": {"top1": round(min(100.0, 30 + top1), 2)},
            "50": {"top1": round(1.5 * top1, 2), "top5": round(min(100.0, 3 * top1), 2)},
            "100": {"top1": round(1.2 * top1, 2), "top5": round(min(100.0, 2.6 * top1), 2)}}
    curve = [{"epoch": e, "train_loss": round(5.0 - e * 0.5, 2), "val_top1": round(top1 * e / 3, 2),
              "val_top5": round(top5 * e / 3, 2)} for e in (1, 2, 3)]
    metrics = {"top1": top1, "top5": top5, "n_test": 200, "chance_top1": 0.5, "chance_top5": 2.5, "kway": kway,
               "galleries": {"text": {"top1": round(top1 / 2, 2), "top5": round(top5 / 2, 2)}},
               "val": {"best_epoch": 3, "best_top1": curve[-1]["val_top1"], "selected_epoch": 3, "curve": curve}}
    timings = {"load_s": 1.0, "train_s": 30.0 + 10 * subject + seed, "eval_s": 0.5,
               "samples_per_s": 5000.0 + 100 * subject, "epochs_run": 3}
    return RunRecord(spec(method, variant, protocol, subject, seed), COMPLETED, metrics=metrics, timings=timings,
                     provenance={"git_commit": "0" * 40, "git_dirty": False, "device": "cpu", "data": dict(data)})


def failed(method, variant, protocol, subject, seed):
    return RunRecord(spec(method, variant, protocol, subject, seed), FAILED, metrics={"top1": 99.0},
                     timings={"train_s": 5.0},
                     error={"type": "RuntimeError", "message": "CUDA out of memory", "traceback": "..."},
                     provenance={"data": dict(REAL_DATA)})


def fixed_records() -> list[RunRecord]:
    records = []
    for (method, variant), base in INTRA.items():
        for subject in range(1, 9):
            for seed in (0, 1):
                if method == "atm" and (subject, seed) == (3, 1):
                    continue  # missing: never ran
                if method == "atm" and (subject, seed) == (2, 0):
                    # failed, with a bogus partial top-1 that must never reach a mean
                    records.append(failed(method, variant, "intra", subject, seed))
                    continue
                records.append(completed(method, variant, "intra", subject, seed, base))
    for (method, variant), base in INTER.items():
        for subject in (1, 2, 3, 4):
            records.append(completed(method, variant, "inter", subject, 0, base))
    return records


# --- headless Chromium, for the tests that load the HTML report in a browser ------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(exe, tmp_path, *args):
    # Flags from the environment notes: no sandbox as root, and no background connections on a closed network.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)

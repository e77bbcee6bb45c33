"""Checkpoint size and write time of built-in methods at the paper's shape (docs/run-records.md#checkpoints-and-resume).

Each method is built from its real recipe (not the synthetic one) for 63 channels × 250 samples and 1024-d features,
takes one optimiser step on random data (so that the optimiser has its moments), and its checkpoint is written the
way the trainer writes it (with the best epoch's weights, as ``selection: best_val`` keeps them)::

    python scripts/checkpoint_sizes.py [--methods nice,atm,mcdb] [--rounds 3]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.checkpoint import capture_rng, write_checkpoint  # noqa: E402
from bench.method import DataInfo  # noqa: E402
from bench.protocols import TrainSet  # noqa: E402
from bench.registry import METHODS  # noqa: E402
from bench.specs import resolve_config  # noqa: E402
from bench.train import DeviceData, EpochClock, EpochTotals, Selection, Trainer  # noqa: E402

CHANS, TIMES, DIM, ROWS, CONCEPTS = 63, 250, 1024, 256, 64


def paper_shape_set(rng: np.random.Generator) -> TrainSet:
    return TrainSet(eeg=rng.standard_normal((ROWS, CHANS, TIMES)).astype(np.float16),
                    row_image=np.arange(ROWS) % CONCEPTS, row_concept=np.arange(ROWS) % CONCEPTS,
                    row_subject=np.zeros(ROWS, dtype=np.int64),
                    image=rng.standard_normal((CONCEPTS, DIM)).astype(np.float32),
                    text=rng.standard_normal((CONCEPTS, DIM)).astype(np.float32))


def measure(method_name: str, rounds: int) -> dict:
    cfg = resolve_config(method_name, sets=["data.root=/paper-shape", "train.batch_size=64"])
    info = DataInfo(n_chans=CHANS, n_times=TIMES, sfreq=250.0, ch_names=tuple(f"E{i}" for i in range(CHANS)),
                    feature_dim=DIM, n_subjects=10, n_train_concepts=1654, has_text=True)
    torch.manual_seed(0)
    method = METHODS.create(method_name, info=info, **cfg["method"])
    trainer = Trainer(cfg["train"], 0, progress=False)
    from bench.train import make_accelerator

    acc = trainer.accelerator = make_accelerator("no")
    data = DeviceData(paper_shape_set(np.random.default_rng(0)), acc.device)
    fit = trainer._prepare(method, data, acc)
    trainer._optimizer_step(fit, torch.arange(64), EpochTotals.zeros(acc.device))
    selection = Selection(best=1.0, best_state=copy.deepcopy({k: v.detach().cpu()
                                                              for k, v in method.state_dict().items()}))
    from bench.train import FitResult

    trainer.result = FitResult()
    payload = trainer._payload(fit, selection, EpochClock(time.perf_counter()), 1, [capture_rng()])
    times = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.pt"
        for _ in range(rounds):
            t = time.perf_counter()
            size = write_checkpoint(path, payload)
            times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in method.parameters())
    return {"method": method_name, "params": params, "bytes": size, "write_s": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="nice,atm,mcdb")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| method | parameters | checkpoint | write (best of %d) |" % args.rounds)
    print("|---|---|---|---|")
    for name in args.methods.split(","):
        m = measure(name, args.rounds)
        print(f"| {m['method']} | {m['params'] / 1e6:.2f} M | {m['bytes'] / 1e6:.1f} MB | {m['write_s']:.2f} s |")


if __name__ == "__main__":
    main()

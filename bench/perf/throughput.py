"""Training throughput per method, our Trainer against the reference-style loop, plus the method's evaluation time.

Both loops train the same freshly seeded model with the same loss, optimiser, batch size and number of measured
samples on the same device; only the data path and step loop differ. Our figure comes from the real
:class:`bench.train.Trainer` (its ``samples_per_s`` counts optimisation steps only): one-epoch fits over exactly
``steps`` batches each. After ``warmup`` unmeasured batches of each loop, the two alternate for ``rounds`` rounds
(ours first in odd rounds, the reference first in even ones), so load from other tenants of a shared machine falls
on both. The ratio is the median of the per-round ratios: load drifts over minutes, and a round's two halves see
nearly the same load where the two loops' medians may not.
"""
from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch

from bench.evaluate import ZeroShotEvaluator
from bench.perf.reference import ReferenceLoop
from bench.protocols import EvalSet, SealedTest, TrainSet
from bench.train import Trainer

#: validation rows the Trainer scores after its epoch: it must validate, but that is not what is measured here
N_VAL_ROWS = 8


class TrainingRows:
    """Random training images of one subject as TrainSets, averaged or single-trial, loaded once per kind."""

    def __init__(self, ds, subject: int, seed: int = 0):
        self.ds, self.subject = ds, subject
        self.rng = np.random.default_rng(seed)
        self.features = ds.train_features()
        self._averaged: np.ndarray | None = None

    def full_epoch_rows(self, average: bool) -> int:
        reps = 1 if average else self.ds.load_train(self.subject, average=False).shape[1]
        return self.ds.n_train_images * reps

    def sample(self, n_rows: int, average: bool) -> TrainSet:
        trials = self.ds.load_train(self.subject, average=False)  # a memory map: rows are read when indexed
        reps = 1 if average else trials.shape[1]
        n_images = math.ceil(n_rows / reps)
        if n_images > self.ds.n_train_images:
            raise ValueError(f"{n_rows} rows need {n_images} training images; the data have {self.ds.n_train_images}")
        images = np.sort(self.rng.choice(self.ds.n_train_images, size=n_images, replace=False))
        if average:
            if self._averaged is None:
                self._averaged = self.ds.load_train(self.subject, average=True)
            eeg = self._averaged[images].astype(np.float16)
            row_image = images
        else:
            eeg = np.asarray(trials[images], dtype=np.float16).reshape(-1, *trials.shape[2:])
            row_image = np.repeat(images, reps)
        eeg, row_image = eeg[:n_rows], row_image[:n_rows]
        concept = np.asarray(self.ds.train_image_concept, dtype=np.int64)[row_image]
        return TrainSet(eeg=eeg, row_image=row_image, row_concept=concept,
                        row_subject=np.zeros(len(row_image), dtype=np.int64), image=self.features.image,
                        text=self.features.text)

    def validation(self, train: TrainSet) -> EvalSet:
        rows = np.arange(min(N_VAL_ROWS, len(train)))
        return EvalSet(eeg=train.eeg[rows].astype(np.float32), gallery=train.image[train.row_image[rows]],
                       fold=np.zeros(len(rows), dtype=np.int64), subject=train.row_subject[rows],
                       concept=train.row_concept[rows], text=train.text)


def build_method(name: str, cfg: dict, ds, train: TrainSet):
    from bench.execute import build_method as build  # the runs' own builder: same seeding, same DataInfo
    from bench.specs import data_info

    return build(name, cfg, data_info(ds, train), seed=0)


def trainer_config(cfg: dict, batch_size: int, compile_model: bool) -> dict:
    """The method's recipe with one epoch, no LR warm-up and no checkpoint copies (they are not step time)."""
    return {**cfg["train"], "epochs": 1, "batch_size": batch_size, "grad_accum": 1, "warmup_epochs": 0,
            "selection": "last", "patience": None, "val_every": 1, "compile": compile_model}


class TrainerLoop:
    """Our Trainer, one one-epoch fit of ``steps`` fresh random batches per call, on the same model each time."""

    def __init__(self, method, rows: TrainingRows, train_cfg: dict, average: bool):
        self.method, self.rows, self.cfg, self.average = method, rows, train_cfg, average
        self.precision = "no"

    def run(self, steps: int) -> float:
        batch = int(self.cfg["batch_size"])
        train = self.rows.sample(steps * batch, self.average)
        result = Trainer(self.cfg, seed=0, progress=False).fit(self.method, train, self.rows.validation(train))
        self.precision = result.mixed_precision
        return steps * batch / result.samples_per_s


def batch_assembly_ms(rows: TrainingRows, ref: ReferenceLoop, average: bool, batch_size: int, device: torch.device,
                      repeats: int = 3) -> dict:
    """Milliseconds to assemble one batch, without the model: the only part of a step in which the loops differ.

    On a CPU the model's step takes seconds and hides this difference; this figure says what is left for a GPU.
    """
    from bench.train import DeviceData

    data = DeviceData(rows.sample(batch_size * repeats, average), device)
    order = torch.randperm(len(data))
    ours, reference = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        data.batch(order[i * batch_size:(i + 1) * batch_size]).eeg.sum().item()  # .item(): wait for the device
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref.fetch().eeg.sum().item()
        reference.append(time.perf_counter() - t0)
    return {"ours": 1000 * statistics.median(ours), "reference": 1000 * statistics.median(reference)}


def evaluation_time(method, ds, subject: int, cfg: dict, device: torch.device) -> dict:
    """The test path of a run: open the sealed test partition (cached) and score it with the config's evaluator."""
    t0 = time.perf_counter()
    test = SealedTest(ds, subject, None, 0).open()
    t1 = time.perf_counter()
    ZeroShotEvaluator.from_config(cfg).score(method, test, device)
    t2 = time.perf_counter()
    return {"test_open_s": t1 - t0, "score_s": t2 - t1, "n_test": len(test)}


def measure_method(name: str, cfg: dict, ds, rows: TrainingRows, device: torch.device, batch_size: int,
                   warmup: int, steps: int, rounds: int, compile_model: bool) -> dict:
    average = bool(cfg["data"]["train_average"])
    train_cfg = trainer_config(cfg, batch_size, compile_model)
    probe = rows.sample(batch_size, average)
    ours = TrainerLoop(build_method(name, cfg, ds, probe), rows, train_cfg, average)
    method = build_method(name, cfg, ds, probe)
    # the reference's DataLoader also feeds batch_assembly_ms's three fetches
    ref = ReferenceLoop(method, rows.sample((warmup + rounds * steps + 3) * batch_size, average), train_cfg, device,
                        batch_size)
    ours.run(warmup)
    ref.run(warmup)
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(rounds):
        order = (("ours", ours), ("reference", ref)) if r % 2 == 0 else (("reference", ref), ("ours", ours))
        for key, loop in order:
            times[key].append(loop.run(steps))
    samples = steps * batch_size
    full = rows.full_epoch_rows(average)
    out = {"method": name, "train_average": average, "batch_size": batch_size, "warmup_steps": warmup,
           "measured_steps": steps, "rounds": rounds, "epoch_rows": full}
    for key, loop in (("ours", ours), ("reference", ref)):
        rate = samples / statistics.median(times[key])
        out[key] = {"samples_per_s": rate, "step_s": batch_size / rate, "epoch_s": full / rate,
                    "round_samples_per_s": [round(samples / t, 2) for t in times[key]], "precision": loop.precision}
    out["round_ratios"] = [round(r / o, 3) for o, r in zip(times["ours"], times["reference"])]
    out["ratio"] = statistics.median(out["round_ratios"])
    out["batch_ms"] = batch_assembly_ms(rows, ref, average, batch_size, device)
    out["eval"] = evaluation_time(method, ds, rows.subject, cfg, device)
    return out

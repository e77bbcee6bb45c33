"""Training throughput per method, our Trainer against the reference code's loop and model structure, the step's
fraction of the machine's GEMM peak, and the method's evaluation time.

Both loops train the same freshly seeded weights with the same loss, optimiser, batch size and number of measured
samples on the same device; the reference runs them in the reference's module structure (for NICE, ATM-S and MCDB's
TSConv encoder: separate Conv2d and AvgPool2d, see :mod:`bench.perf.reference`) with its per-sample DataLoader and
per-epoch validation. Our figure comes from the real
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
from bench.method import TrainState
from bench.perf.peak import step_flops
from bench.perf.reference import ReferenceLoop, reference_structure
from bench.protocols import EvalSet, SealedTest, TrainSet
from bench.train import DeviceData, Trainer

#: validation rows the Trainer scores after its epoch: it must validate, but that is not what is measured here
N_VAL_ROWS = 8
#: validation rows of the per-epoch validation pass that is measured (NICE validates on 740 training rows)
VAL_ROWS = 740


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
        images = self._draw(math.ceil(n_rows / reps))
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

    def _draw(self, n_images: int) -> np.ndarray:
        """``n_images`` training images in file order: distinct while the data have that many; beyond, every image
        once per whole pass and the rest distinct (a GPU's ``--steps`` can ask for more rows than one subject holds,
        as several epochs of a run would)."""
        n_all = self.ds.n_train_images
        passes = [self.rng.permutation(n_all) for _ in range(n_images // n_all)]
        return np.sort(np.concatenate(passes + [self.rng.choice(n_all, size=n_images % n_all, replace=False)]))

    def validation(self, train: TrainSet, n_rows: int = N_VAL_ROWS) -> EvalSet:
        rows = np.arange(min(n_rows, len(train)))
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


def _alternate(ours: TrainerLoop, ref: ReferenceLoop, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round of ``steps`` batches of each loop, ours first in even rounds, the reference in odd ones."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(rounds):
        order = (("ours", ours), ("reference", ref)) if r % 2 == 0 else (("reference", ref), ("ours", ours))
        for key, loop in order:
            times[key].append(loop.run(steps))
    return times


def validation_s(method, ref: ReferenceLoop, val: EvalSet, cfg: dict, device: torch.device, rounds: int) -> dict:
    """Median seconds of one per-epoch validation pass: ours (the run's evaluator on the validation rows) and the
    reference's (a DataLoader in eval mode, as nice_stand.py), alternating."""
    evaluator = ZeroShotEvaluator.from_config(cfg)
    ours, reference = [], []
    for _ in range(max(2, rounds)):
        t0 = time.perf_counter()
        evaluator.validate(method, val, device)
        ours.append(time.perf_counter() - t0)
        reference.append(ref.validate(val))
    return {"ours": statistics.median(ours), "reference": statistics.median(reference), "rows": len(val.eeg)}


def limit_figures(flops_per_sample: float, rate: float, precision: str, peaks: dict) -> dict:
    """Achieved FLOP/s of a loop (the model's counted work × samples/s) and its fraction of the GEMM peak of the
    precision it ran in (bf16 autocast against the bf16 peak, else float32)."""
    achieved = flops_per_sample * rate
    return {"gflop_per_s": achieved / 1e9, "peak_fraction": achieved / _peak_of(precision, peaks)}


def _peak_of(precision: str, peaks: dict) -> float:
    return peaks["bfloat16"] if precision == "bf16" and peaks.get("bfloat16") else peaks["float32"]


def against_best_peak(measured: list[dict], peaks: dict) -> None:
    """Restate every loop's ``peak_fraction`` against ``peaks`` (the best GEMM rates seen over the whole section):
    a peak timed while another tenant held the cores is too low, and would flatter every fraction measured against
    it (on the shared VM one timing gave 38.9 GFLOP/s where the machine does 67)."""
    for entry in measured:
        for loop in ("ours", "reference"):
            run = entry[loop]
            run["peak_fraction"] = run["gflop_per_s"] * 1e9 / _peak_of(run["precision"], peaks)


def measure_method(name: str, cfg: dict, ds, rows: TrainingRows, device: torch.device, batch_size: int,
                   warmup: int, steps: int, rounds: int, compile_model: bool, peaks: dict) -> dict:
    """Our Trainer on the method's model against the reference loop on the reference's model structure (our
    weights in NICE's separate modules, :func:`reference_structure`): steps, validation, the step's counted FLOPs."""
    average = bool(cfg["data"]["train_average"])
    train_cfg = trainer_config(cfg, batch_size, compile_model)
    probe = rows.sample(batch_size, average)
    ours = TrainerLoop(build_method(name, cfg, ds, probe).to(device), rows, train_cfg, average)
    flops = step_flops(ours.method, DeviceData(probe, device).batch(torch.arange(batch_size)),
                       TrainState(epoch=1, epochs=1, step=0, steps_per_epoch=1))
    method = build_method(name, cfg, ds, probe)
    replaced = reference_structure(method)
    # the reference's DataLoader also feeds batch_assembly_ms's three fetches
    ref = ReferenceLoop(method, rows.sample((warmup + rounds * steps + 3) * batch_size, average), train_cfg, device,
                        batch_size)
    ours.run(warmup)
    ref.run(warmup)
    times = _alternate(ours, ref, steps, rounds)
    samples, full = steps * batch_size, rows.full_epoch_rows(average)
    val = validation_s(ours.method, ref, rows.validation(probe, VAL_ROWS), cfg, device, rounds)
    epochs, steps_per_epoch = int(cfg["train"]["epochs"]), math.ceil(full / batch_size)
    out = {"method": name, "train_average": average, "batch_size": batch_size, "warmup_steps": warmup,
           "measured_steps": steps, "rounds": rounds, "epoch_rows": full, "epochs": epochs,
           "reference_structure": replaced > 0, "step_gflop": flops / 1e9, "validation": val}
    for key, loop in (("ours", ours), ("reference", ref)):
        rate = samples / statistics.median(times[key])
        epoch_s = steps_per_epoch * batch_size / rate + val[key]
        out[key] = {"samples_per_s": rate, "step_s": batch_size / rate, "epoch_s": epoch_s,
                    "trained_s": epochs * epoch_s, "round_samples_per_s": [round(samples / t, 2) for t in times[key]],
                    "precision": loop.precision, **limit_figures(flops / batch_size, rate, loop.precision, peaks)}
    out["round_ratios"] = [round(r / o, 3) for o, r in zip(times["ours"], times["reference"])]
    out["ratio"] = statistics.median(out["round_ratios"])
    out["epoch_ratio"] = out["reference"]["epoch_s"] / out["ours"]["epoch_s"]
    out["batch_ms"] = batch_assembly_ms(rows, ref, average, batch_size, device)
    out["eval"] = evaluation_time(ours.method, ds, rows.subject, cfg, device)
    return out

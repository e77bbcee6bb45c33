"""Experiment tracking for `bench run --tracker tensorboard|mlflow|wandb`, through Ray Tune's logger callbacks.

Every tracker gets the same view of a run (:class:`TrackedRuns`): its label as the run name, its resolved config
(flattened to dotted keys, as ``--set`` takes them) as parameters plus the whole config as a YAML file, the per-epoch
curves (``train_loss``, ``val_top1``, ``val_top5``, step = epoch) as the trial reports them, and, once the run's record
is written, the epochs no report carried (a closed-form fit, epochs before a resume) and the final test metrics
(``test_top1``, ``test_top5``, ``test_mean_rank``, chance levels, the selected epoch ...). The numbers come from the
run record the harness wrote, so a tracker shows exactly what the leaderboard does.

Where: MLflow's local file store ``<results-dir>/mlruns`` (or ``$MLFLOW_TRACKING_URI``), TensorBoard event files under
``<results-dir>/tensorboard/<experiment>/<sweep>/<run>``, W&B offline runs under ``<results-dir>/wandb`` unless
``WANDB_MODE`` says otherwise. The callbacks run in the driver: only the machine running `bench run` needs the package.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import yaml
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from bench.errors import UserError
from bench.records import COMPLETED, FAILED, RunRecord, RunSpec, RunStore

#: tracker → (the module it needs, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboardX", "pip install tensorboardX"),
    "mlflow": ("mlflow", "pip install 'thingsbench[track]' (or: pip install mlflow-skinny)"),
    "wandb": ("wandb", "pip install wandb"),
}
EPOCH_METRICS = ("train_loss", "val_top1", "val_top5")
MLFLOW_PARAM_MAX = 6000  # MLflow refuses longer parameter values


class TrackerError(UserError, ValueError):
    """An unknown tracker, or one whose package is not installed."""


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """``"mlflow,tensorboard"`` → the trackers, each checked to be known and installed (before any work)."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"--tracker {name!r} is not a tracker; choose from {', '.join(TRACKERS)}")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"--tracker {name} needs the {module} package, which is not installed: {install}")
    return names


def mlflow_uri(results_dir: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(results_dir).resolve() / "mlruns").as_uri()


def tracker_callbacks(names, results_dir: str | Path, experiment: str) -> list:
    """One Tune callback per tracker named (see :func:`parse_trackers`)."""
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
    return [kinds[name](Path(results_dir).resolve(), experiment) for name in names]


# --- what a run shows in every tracker -------------------------------------------------------------------------------
def flat_config(config: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_params(spec: dict) -> dict[str, str]:
    """The resolved config as dotted keys (``train.lr``) with JSON values, plus subject and seed."""
    flat = {**flat_config(spec["config"]), "subject": spec["subject"], "seed": spec["seed"]}
    return {k: (v if isinstance(v, str) else json.dumps(v))[:MLFLOW_PARAM_MAX] for k, v in flat.items()}


def run_tags(spec: dict, spec_hash: str) -> dict[str, str]:
    return {"label": spec_label(spec), "method": spec["method"], "variant": spec.get("variant") or "",
            "protocol": spec["protocol"], "spec_hash": spec_hash}


def spec_label(spec: dict) -> str:
    return RunSpec.from_dict(spec).label


def numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def curve_metrics(entry: dict) -> dict[str, float]:
    return numbers({k: entry.get(k) for k in EPOCH_METRICS})


def final_metrics(record: RunRecord) -> dict[str, float]:
    m, val = record.metrics, record.metrics.get("val") or {}
    return numbers({"test_top1": m.get("top1"), "test_top5": m.get("top5"), "test_mean_rank": m.get("mean_rank"),
                    "chance_top1": m.get("chance_top1"), "chance_top5": m.get("chance_top5"),
                    "n_test": m.get("n_test"), "val_best_top1": val.get("best_top1"),
                    "selected_epoch": val.get("selected_epoch"), "epochs_run": record.timings.get("epochs_run"),
                    "train_s": record.timings.get("train_s")})


class TrackedRuns:
    """One tracker run per trial: opened at its start, fed per epoch, closed with its record's numbers.

    A tracker implements ``_open(trial, name, params, tags, config_yaml)``, ``_log(trial, step, metrics)`` and
    ``_close(trial, status, final)`` (status FINISHED, FAILED or KILLED: the spec was busy, not computed here)."""

    def _start_tracking(self, results_dir: Path, experiment: str) -> None:
        self.results_dir, self.experiment = results_dir, experiment
        self._epochs: dict = {}  # trial → the epochs logged so far

    def log_trial_start(self, trial) -> None:
        if trial in self._epochs:  # Tune restarted the trial: its run goes on
            return
        spec = trial.config["trial"]["spec"]
        self._epochs[trial] = set()
        self._open(trial, spec_label(spec), run_params(spec), run_tags(spec, trial.config["trial"]["spec_hash"]),
                   yaml.safe_dump(spec["config"], sort_keys=False))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._epochs:
            self.log_trial_start(trial)
        if result.get("status") == "running" and "epoch" in result:
            self._log(trial, int(result["epoch"]), curve_metrics(result))
            self._epochs[trial].add(int(result["epoch"]))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial not in self._epochs:
            self.log_trial_start(trial)
        logged = self._epochs.pop(trial)
        record = self._record(trial) if (trial.last_result or {}).get("status") in (COMPLETED, FAILED) else None
        if record is None:
            self._close(trial, "FAILED" if failed or (trial.last_result or {}).get("status") != "busy" else "KILLED",
                        {})
            return
        curve = (record.metrics.get("val") or {}).get("curve") or []
        for entry in curve:  # what no report carried: a closed-form fit, the epochs before a resume
            if entry.get("epoch") not in logged and curve_metrics(entry):
                self._log(trial, int(entry["epoch"]), curve_metrics(entry))
        final = final_metrics(record) if record.status == COMPLETED else {}
        if final:
            self._log(trial, max([1, *logged, *(int(e.get("epoch", 1)) for e in curve)]), final)
        self._close(trial, "FINISHED" if record.status == COMPLETED else "FAILED", final)

    def _record(self, trial) -> RunRecord | None:
        try:
            record = RunStore(self.results_dir).read(trial.config["trial"]["spec_hash"])
        except UserError:  # unreadable: the summary says so; the tracker shows no numbers of it
            return None
        return None if record is None or record.corrupt else record


# --- the trackers ----------------------------------------------------------------------------------------------------
class MLflowTracker(TrackedRuns, MLflowLoggerCallback):
    """MLflow: one run per spec in experiment ``experiment``; params, curves, final metrics, config.yaml."""

    def __init__(self, results_dir: Path, experiment: str):
        uri = mlflow_uri(results_dir)
        if uri.startswith("file:"):  # MLflow 3 keeps its file store in maintenance; it still reads and writes it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        MLflowLoggerCallback.__init__(self, tracking_uri=uri, experiment_name=experiment)
        self._start_tracking(results_dir, experiment)

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _open(self, trial, name, params, tags, config_yaml) -> None:
        from mlflow.entities import Param

        run = self.mlflow_util.start_run(run_name=name, tags=tags)
        self._trial_runs[trial] = run.info.run_id
        client = self._client()
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run.info.run_id, params=items[i:i + 100])
        client.log_text(run.info.run_id, config_yaml, "config.yaml")

    def _log(self, trial, step, metrics) -> None:
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step)

    def _close(self, trial, status, final) -> None:
        self.mlflow_util.end_run(run_id=self._trial_runs.pop(trial), status=status)


class TensorBoardTracker(TrackedRuns, TBXLoggerCallback):
    """TensorBoard: event files per run with the curves as scalars, the config as text, the hparams at the end."""

    def __init__(self, results_dir: Path, experiment: str):
        TBXLoggerCallback.__init__(self)
        self._start_tracking(results_dir, experiment)
        self._params: dict = {}

    def _open(self, trial, name, params, tags, config_yaml) -> None:
        sweep = getattr(trial, "experiment_dir_name", None) or time.strftime("run-%Y%m%d-%H%M%S")
        folder = self.results_dir / "tensorboard" / self.experiment / sweep / name.replace(" ", "_")
        writer = self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
        self._params[trial] = {**params, **tags}
        writer.add_text("config", "```yaml\n" + config_yaml + "```")

    def _log(self, trial, step, metrics) -> None:
        writer = self._trial_writer[trial]
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def _close(self, trial, status, final) -> None:
        from tensorboardX.summary import hparams

        writer, params = self._trial_writer.pop(trial), self._params.pop(trial)
        if final:
            for summary in hparams(hparam_dict=params, metric_dict=final):
                writer.file_writer.add_summary(summary)
        writer.close()


class WandbTracker(TrackedRuns, WandbLoggerCallback):
    """Weights & Biases: offline unless WANDB_MODE says otherwise; project = the experiment (or $WANDB_PROJECT)."""

    def __init__(self, results_dir: Path, experiment: str):
        WandbLoggerCallback.__init__(self, project=os.environ.get("WANDB_PROJECT") or experiment,
                                     mode=os.environ.get("WANDB_MODE", "offline"),
                                     dir=os.environ.get("WANDB_DIR", str(results_dir)))
        self._start_tracking(results_dir, experiment)

    def setup(self, *args, **kwargs) -> None:
        """Ray asks for an API key unless ``$WANDB_MODE`` is offline or disabled; our offline default is a keyword,
        so the variable says it for the length of the check (an offline sweep needs no account)."""
        unset = "WANDB_MODE" not in os.environ
        if unset:
            os.environ["WANDB_MODE"] = self.kwargs["mode"]
        try:
            WandbLoggerCallback.setup(self, *args, **kwargs)
        finally:
            if unset:
                os.environ.pop("WANDB_MODE", None)

    def _open(self, trial, name, params, tags, config_yaml) -> None:
        config = {**params, **tags}
        self._start_logging_actor(trial, [], id=None, name=name, resume=False, reinit=True, allow_val_change=True,
                                  group=self.group or trial.experiment_dir_name, project=self.project, config=config,
                                  tags=[tags["method"], tags["protocol"]], **self.kwargs)

    def _log(self, trial, step, metrics) -> None:
        from ray.air.integrations.wandb import _QueueItem

        # the logging actor takes W&B's step from training_iteration: the epoch here
        self._trial_queues[trial].put((_QueueItem.RESULT, {**metrics, "training_iteration": step}))

    def _close(self, trial, status, final) -> None:
        WandbLoggerCallback.log_trial_end(self, trial, failed=status != "FINISHED")

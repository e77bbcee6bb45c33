"""Scheduling runs on Ray: drop the specs with a current completed record, run the rest as Ray Tune trials.

The harness's store decides what is left to do (Ray's experiment state cannot add grid points on restore): a spec
with a ``completed`` record is never scheduled again, so a killed sweep restarted with the same command computes
only what is missing. Each trial goes through the same code path as `bench train` (:func:`bench.execute.claim_and_run`),
holds the spec's lock while computing it, and writes its record itself; Ray only schedules.

What became of each spec (done, reused, failed, busy), a trial whose process died without a record, and the locks
that tell a dead trial from another live `bench run` are in :mod:`bench.sweep_accounting`. A local Ray started here
is stopped by a reaper process (:mod:`bench.ray_reaper`) if this driver dies without stopping it (``kill -9``).

Trials with ``gpus_per_trial > 1`` (or ``workers_per_trial > 1``) run as DDP: the Tune trial is a light driver that
claims the spec and launches a Ray Train ``TorchTrainer`` whose workers each run Accelerate (which picks up the
process group Ray Train created).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.progress import ray_log_level, tune_verbosity
from bench.records import COMPLETED, RunRecord, RunSpec, RunStore
from bench.sweep_accounting import (BUSY, DONE, FAILED, REUSED, Holder, Outcome, describe_death, driver_stamp,
                                    exit_notes, lock_holder, lock_path, settle_lost_trial, stamp_lock,
                                    wait_for_release)


#: a DDP trial's Tune function only launches and waits for its Ray Train workers; Tune needs a non-zero request
DDP_DRIVER_CPU = 0.01


class OrchestrationError(UserError, RuntimeError):
    """The sweep cannot be scheduled (resources, shared storage, Ray connection)."""


@dataclass
class RayOptions:
    address: str | None = None          # None: start a local Ray; "auto" or "HOST:PORT": join a running cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1          # DDP workers per trial (defaults to gpus_per_trial when that is > 1)
    max_concurrent: int | None = None
    num_cpus: int | None = None         # size of a local Ray (default: this machine's cores)
    object_store_mb: int = 256
    #: Ray Tune restarts a trial whose process died up to this many times, from its last checkpoint
    #: (bench/checkpoint.py); 0: a dead trial stays dead
    max_failures: int = 0
    verbose: bool = False               # Ray's banners, Tune's reporter and the workers' logs on this terminal
    live: bool = False                  # a live table (a terminal) instead of progress lines (bench/progress.py)
    trackers: tuple = ()                # experiment trackers fed by Tune's logger callbacks (bench/tracking.py)
    experiment: str = "thingsbench"     # the trackers' experiment (MLflow) / project (W&B) / folder (TensorBoard)
    #: trials reuse warm Ray worker processes (Tune's actor reuse); False: a fresh process per trial
    reuse_workers: bool = True

    def ddp_workers(self) -> int:
        if self.workers_per_trial > 1:
            return self.workers_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1


@dataclass
class GridResult:
    records: list[RunRecord] = field(default_factory=list)  # the requested specs' records, busy ones left out
    scheduled: int = 0    # trials launched, retries included
    skipped: int = 0      # specs reused: completed by the current code before, or by another `bench run` meanwhile
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # spec_hash → what became of it
    labels: dict[str, str] = field(default_factory=dict)        # spec_hash → label
    wall_s: float = 0.0

    def of_kind(self, kind: str) -> list[tuple[str, str]]:
        """(label, reason) of every spec whose outcome is ``kind`` (DONE, REUSED, FAILED or BUSY)."""
        return [(self.labels[h], o.reason) for h, o in self.outcomes.items() if o.kind == kind]

    @property
    def busy(self) -> list[str]:
        return [label for label, _ in self.of_kind(BUSY)]


@dataclass
class Plan:
    todo: list[RunSpec] = field(default_factory=list)
    done: list[RunSpec] = field(default_factory=list)     # completed by the current code: reused
    stale: dict[str, list[str]] = field(default_factory=dict)  # method → why each of its stale records is rerun

    def stale_lines(self) -> list[str]:
        lines = []
        for method, reasons in self.stale.items():
            why = "; ".join(sorted(set(reasons)))
            lines.append(f"{len(reasons)} stale record(s) recomputed: {method}: {why}")
        return lines


def plan(specs: list[RunSpec], store: RunStore, force: bool = False) -> Plan:
    """Which specs to run: those without a completed record of the current code. Duplicate specs run once."""
    from bench.execute import current_code, stale_reason

    out, seen, codes = Plan(), set(), {}
    for spec in specs:
        if spec.spec_hash in seen:
            continue
        seen.add(spec.spec_hash)
        key = (spec.method, spec.protocol, repr(sorted(spec.config["method"].items())))
        if key not in codes:  # hashing the sources once per method configuration is enough
            codes[key] = current_code(spec)
        code = codes[key]
        if not force and store.is_current(spec, code.digest):
            out.done.append(spec)
            continue
        out.todo.append(spec)
        reason = None if force else stale_reason(store.read(spec.spec_hash), code)
        if reason:
            out.stale.setdefault(spec.label.split(" ")[0], []).append(reason)
    return out


def ray_environment() -> dict[str, str]:
    """Quiet, offline-safe defaults for the driver and every worker (set only where the user has not)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_CHDIR_TO_TRIAL_DIR": "0",
            "RAY_TRAIN_V2_ENABLED": "1",
            # a checkpoint every epoch with num_to_keep=1 snapshots the experiment often, by design: no warning
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


#: the reaper of the local Ray this process started (see bench/ray_reaper.py). Held for the life of the process:
#: the reaper acts when its stdin closes, which happens when this object is collected or the process ends.
_REAPER: subprocess.Popen | None = None


def _ray_temp_root() -> str:
    try:
        from ray._common.utils import get_default_ray_temp_dir  # where a local Ray puts its sessions

        return get_default_ray_temp_dir()
    except ImportError:
        return os.path.join(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp", "ray")


def start_reaper() -> subprocess.Popen:
    """Start (once per process) the reaper that stops this process's local Ray when the process dies."""
    global _REAPER
    if _REAPER is None or _REAPER.poll() is not None:
        # -I: the reaper needs only the standard library, and a fresh session keeps Ctrl-C and killpg off it
        _REAPER = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("ray_reaper.py")),
                                    str(os.getpid()), _ray_temp_root()], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return _REAPER


def announce_session(session_dir: str | None) -> None:
    """Tell the reaper which Ray session to stop: only one this process started (Ray names it after our pid)."""
    if _REAPER is None or not session_dir or not Path(session_dir).name.endswith(f"_{os.getpid()}"):
        return
    _REAPER.stdin.write(f"session {session_dir}\n".encode())
    _REAPER.stdin.flush()


def init_ray(opts: RayOptions) -> None:
    import ray

    for key, value in ray_environment().items():
        os.environ.setdefault(key, value)
    _skip_callback_telemetry()
    if ray.is_initialized():
        return
    try:
        if opts.address:  # someone else's cluster: no reaper, whatever happens to this driver
            ray.init(address=opts.address, log_to_driver=opts.verbose, logging_level=ray_log_level(opts.verbose))
        else:
            start_reaper()
            # address="local": always a Ray of our own; without it ray.init joins any cluster a `ray start` left on
            # this machine, and then refuses num_cpus
            context = ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(), include_dashboard=False,
                               log_to_driver=opts.verbose, logging_level=ray_log_level(opts.verbose),
                               object_store_memory=opts.object_store_mb * 1024 ** 2)
            announce_session(context.address_info.get("session_dir"))
    except ConnectionError as exc:
        raise OrchestrationError(f"cannot join the Ray cluster at {opts.address!r}: {exc}. Start one with "
                                 f"`ray start --head` and pass its address (or 'auto' on a cluster node).") from exc


def _skip_callback_telemetry() -> None:
    """With Ray's usage stats off (:func:`ray_environment`), skip Tune's count of the sweep's callbacks by class: to
    know the classes it imports the MLflow, W&B, Comet and Aim integrations whether or not they are used (mlflow alone
    ~2 s of the driver's CPU at each sweep's start on the 2-core VM, while the first trials start), for a usage tag
    that is never sent. A user who turns usage stats on gets Ray's own behaviour."""
    if os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        return
    from ray.air._internal import usage

    usage.tag_callbacks = lambda callbacks: False


def check_resources(opts: RayOptions) -> None:
    """Refuse requests no node can meet: Tune would leave such trials PENDING forever."""
    import ray

    total = ray.cluster_resources()
    workers = opts.ddp_workers()
    need_cpu = opts.cpus_per_trial * workers + (DDP_DRIVER_CPU if workers > 1 else 0)
    need_gpu = opts.gpus_per_trial
    if need_cpu > total.get("CPU", 0):
        raise OrchestrationError(f"a trial needs {need_cpu:g} CPUs; the Ray cluster has {total.get('CPU', 0):g}")
    if need_gpu > total.get("GPU", 0):
        raise OrchestrationError(f"a trial needs {need_gpu:g} GPUs; the Ray cluster has {total.get('GPU', 0):g} "
                                 f"(use --gpus-per-trial 0 on a CPU-only cluster)")


def check_shared_storage(results_dir: Path) -> None:
    """On a multi-node cluster every node must see the results folder: write a token here, read it on each node."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    token = results_dir / "runs" / f".shared-storage-check-{os.getpid()}"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("ok")
    try:
        @ray.remote(num_cpus=0)
        def sees(path: str) -> bool:
            return Path(path).is_file()

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        missing = []
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            if not ray.get(sees.options(scheduling_strategy=strategy).remote(str(token))):
                # nodes on one machine share an address: the node id tells them apart
                missing.append(f"{node.get('NodeManagerAddress', '?')} (node id {node['NodeID'][:12]})")
        if missing:
            raise OrchestrationError(f"results folder {results_dir} is not visible on node(s) {', '.join(missing)}; "
                                     f"on a cluster --results-dir must be on storage every node mounts (e.g. NFS)")
    finally:
        token.unlink(missing_ok=True)


# --- the trial -------------------------------------------------------------------------------------------------------
#: a trial reports an epoch to Tune at most this often (seconds). Each report is a round trip through the driver (the
#: trial waits for it), a hard link and an experiment snapshot there, and the unlinking of the previous epoch's
#: checkpoint copy: ~60 ms of the driver's CPU, on the trials' cores. With sub-second epochs (4 NICE runs of 30 epochs
#: on tiny data, concurrency 2, 2 cores) the driver used 9-10 s of CPU a grid, 3 s with this; longer epochs than this
#: are all reported.
REPORT_EVERY_S = 5.0


class EpochReports:
    """The trainer's ``on_epoch`` in a trial: the epoch's numbers and checkpoint to Tune (:func:`_report_epoch`), the
    first epoch, a resumed run's first epoch and then at most one every ``every_s`` seconds.

    What is skipped is not lost: the record's curve has every epoch (trackers log the ones no report carried when the
    run ends) and the trainer's own checkpoint of every epoch is in the shared results folder, where a restarted trial
    resumes from it (Tune's copy is only adopted when it is newer: :func:`bench.checkpoint.adopt`)."""

    def __init__(self, every_s: float = REPORT_EVERY_S, report=None, clock=time.monotonic) -> None:
        self.every_s, self.clock, self.last = every_s, clock, None
        self.report = report or _report_epoch

    def __call__(self, entry: dict, checkpoint: Path | None = None, resumed: str | None = None) -> None:
        now = self.clock()
        if self.last is not None and not resumed and now - self.last < self.every_s:
            return
        self.last = now
        self.report(entry, checkpoint, resumed)


def _report_epoch(entry: dict, checkpoint: Path | None = None, resumed: str | None = None) -> None:
    """The epoch's numbers to Tune, with the checkpoint file written for it (Tune's retry restores it)."""
    from ray import tune

    from bench.checkpoint import tune_checkpoint

    with tune_checkpoint(checkpoint) as saved:
        tune.report({"epoch": entry["epoch"], "train_loss": entry["train_loss"],
                     **{k: entry[k] for k in ("val_top1", "val_top5") if entry.get(k) is not None},
                     **({"resumed": resumed} if resumed else {}), "status": "running"}, checkpoint=saved)


def run_trial(config: dict) -> None:
    """One Ray Tune trial = one run spec (module-level so Ray can import it in workers).

    Its last report says what it did: ``completed``/``failed`` (it wrote the record; ``reused`` if another process had
    completed it), or ``busy`` with the lock's contents. A trial that reports none of these died (see
    :func:`bench.sweep_accounting.settle_lost_trial`)."""
    config = config["trial"]  # the grid's one value: this trial's spec and settings
    import torch
    from ray import tune

    from bench.checkpoint import adopt_tune_checkpoint, tune_final_checkpoint
    from bench.execute import RunBusyError, RunOutcome, record_setup_failure
    from bench.provenance import driver_command

    load_plugins(config)
    spec = RunSpec.from_dict(config["spec"])
    store = RunStore(config["results_dir"])
    adopt_tune_checkpoint(store.runs_dir, spec.spec_hash)  # Tune restarted this trial: resume where it died
    if config.get("threads"):
        torch.set_num_threads(max(1, int(config["threads"])))  # Ray's OMP_NUM_THREADS does not reach torch's pool
    with driver_command(config.get("command")), exit_notes():  # the record names the user's `bench run`
        try:
            outcome = _claim_and_compute(spec, store, config)
        except RunBusyError:
            tune.report({"status": BUSY, "spec_hash": spec.spec_hash, "lock": _read_lock(store, spec.spec_hash)})
            return
        except (Exception, SystemExit) as exc:  # outside the run itself (e.g. opening the data): still a record
            outcome = RunOutcome(record_setup_failure(spec, store, exc))
    record = outcome.record
    with tune_final_checkpoint() as ended:  # replaces Tune's copy of the last epoch's weights
        tune.report({"status": record.status, "spec_hash": spec.spec_hash, "reused": outcome.skipped,
                     "top1": record.metrics.get("top1", math.nan), "top5": record.metrics.get("top5", math.nan),
                     "test_selected": bool(record.metrics.get("test_selected", False))}, checkpoint=ended)


def _read_lock(store: RunStore, spec_hash: str) -> str:
    try:
        return lock_path(store, spec_hash).read_text()
    except OSError:
        return ""


def _claim_and_compute(spec: RunSpec, store: RunStore, config: dict):
    """:func:`bench.execute.claim_and_run`; once the lock is ours it names this sweep's driver, then computes."""
    from bench.execute import claim_and_run, execute_spec
    from bench.specs import open_dataset

    def compute() -> RunRecord:
        stamp_lock(store, spec.spec_hash, config["driver"])
        if config.get("ddp_workers", 1) > 1:
            return _launch_ddp(spec, store, config)
        return execute_spec(spec, open_dataset(spec.config), store, progress=False, on_epoch=EpochReports())

    return claim_and_run(spec, store, compute, force=config["force"])


def load_plugins(config: dict) -> None:
    """Workers are fresh processes: load the driver's --plugin files so plugin methods resolve there too."""
    from bench.registry import load_plugin

    for path in config.get("plugins", ()):
        load_plugin(path)


def _ddp_worker(config: dict) -> None:
    from bench.provenance import driver_command
    from bench.execute import execute_spec
    from bench.specs import open_dataset

    load_plugins(config)
    spec = RunSpec.from_dict(config["spec"])
    with driver_command(config.get("command")):
        execute_spec(spec, open_dataset(spec.config), RunStore(config["results_dir"]), progress=False)


def _launch_ddp(spec: RunSpec, store: RunStore, config: dict) -> RunRecord:
    """The spec computed by Ray Train workers (each runs Accelerate) while this trial holds its lock."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers, gpus = config["ddp_workers"], config["gpus_per_trial"]
    per_worker = {"CPU": config["cpus_per_trial"], **({"GPU": gpus / workers} if gpus else {})}
    trainer = TorchTrainer(_ddp_worker, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus),
                                                        resources_per_worker=per_worker),
                           run_config=RunConfig(name=f"ddp-{spec.spec_hash}",
                                                storage_path=str(Path(config["results_dir"]) / "ray")))
    trainer.fit()
    record = store.read(spec.spec_hash)
    if record is None:
        raise RuntimeError(f"DDP workers finished without writing the record of {spec.label}")
    return record


# --- the grid --------------------------------------------------------------------------------------------------------
def _trackers(opts: RayOptions, results_dir: Path) -> list:
    if not opts.trackers:
        return []  # bench.tracking imports MLflow's and W&B's Ray integrations: seconds a sweep without them skips
    from bench.tracking import tracker_callbacks

    return tracker_callbacks(opts.trackers, results_dir, opts.experiment)


def _tuner(todo: list[RunSpec], results_dir: Path, opts: RayOptions, forced: set[str], printer):
    from ray import tune
    import ray

    from bench.progress import progress_callback
    from bench.tune_storage import tune_storage
    from bench.provenance import command_line
    from bench.registry import loaded_plugins

    workers = opts.ddp_workers()
    per_trial = ({"cpu": DDP_DRIVER_CPU} if workers > 1 else
                 {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    concurrency = opts.max_concurrent or max(1, int(cluster_cpus // max(opts.cpus_per_trial * workers, 1e-9)))
    base = {"results_dir": str(results_dir), "threads": opts.cpus_per_trial, "plugins": loaded_plugins(),
            "command": command_line(), "driver": driver_stamp(), "ddp_workers": workers,
            "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial}
    trial_configs = [{**base, "force": s.spec_hash in forced, "spec": s.to_dict(), "spec_hash": s.spec_hash}
                     for s in todo]
    return tune.Tuner(
        tune.with_resources(run_trial, per_trial),
        param_space={"trial": tune.grid_search(trial_configs)},
        # warm workers: a trial's process (torch, the harness, the opened data: bench/data/cache.py) serves the next
        # trial of the same resources; each run still seeds and builds everything itself (bench/execute.py)
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=opts.reuse_workers),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", storage_path=str(results_dir / "ray"),
            storage_filesystem=tune_storage(),  # Tune's per-epoch checkpoint copy is a hard link
            verbose=tune_verbosity(opts.verbose), failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[progress_callback(todo, concurrency, printer, opts.live),
                       *_trackers(opts, results_dir)]),
    )


def local_logs_dir() -> Path | None:
    """This node's Ray log folder, where a dead worker's stdout/stderr are (Ray has no public call for it)."""
    try:
        import ray

        return Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # an internal that moved: the record just goes without the log's last lines
        return None


def _error_text(result) -> str:
    if result is None:
        return "Ray Tune returned no result for this trial (it never ran)"
    error = result.error
    return f"{type(error).__name__}: {error}" if error is not None else "the trial ended without reporting a record"


def settle(spec: RunSpec, result, store: RunStore) -> Outcome:
    """What one trial's last report (``result``: Ray Tune's Result, or None) says became of its spec."""
    from bench.execute import current_code

    metrics = (result.metrics if result is not None else None) or {}
    status = metrics.get("status")
    if status == COMPLETED:
        return Outcome(REUSED if metrics.get("reused") else DONE)
    if status == FAILED:
        record = store.read(spec.spec_hash)
        error = (record.error if record is not None else None) or {}
        return Outcome(FAILED, f"{error.get('type', 'error')}: {error.get('message', 'see its record')}")
    code = current_code(spec).digest
    if status == BUSY:
        holder = Holder.parse(metrics.get("lock", ""))
        if not holder.ours():
            return Outcome(BUSY, str(holder))
        death = describe_death(f"its lock is {holder}: a leftover process of an earlier trial of this sweep", None)
        return settle_lost_trial(spec, store, death, code)
    return settle_lost_trial(spec, store, describe_death(_error_text(result), local_logs_dir()), code)


def run_round(todo: list[RunSpec], results_dir: Path, opts: RayOptions, forced: set[str], printer
              ) -> dict[str, Outcome]:
    """Run ``todo`` as one Ray Tune experiment; every spec comes back with an outcome, trials that died included."""
    init_ray(opts)
    check_resources(opts)
    check_shared_storage(results_dir)
    grid = _tuner(todo, results_dir, opts, forced, printer).fit()
    results = {r.config["trial"]["spec_hash"]: r for r in grid}
    store = RunStore(results_dir)
    return {s.spec_hash: settle(s, results.get(s.spec_hash), store) for s in todo}


def set_aside_busy(specs: list[RunSpec], store: RunStore, result: GridResult, printer) -> list[RunSpec]:
    """The specs no other live `bench run` holds; the others are marked busy (not scheduled, not failed)."""
    free = []
    for spec in specs:
        holder = lock_holder(store, spec.spec_hash)
        if holder is not None and not holder.ours():
            result.outcomes[spec.spec_hash] = Outcome(BUSY, str(holder))
            printer(f"busy  {spec.label}: {holder}")
        else:
            free.append(spec)
    return free


def _retry(todo: list[RunSpec], outcomes: dict[str, Outcome], attempts: dict[str, int], retries: int, printer
           ) -> list[RunSpec]:
    again = [s for s in todo if outcomes[s.spec_hash].kind == FAILED and attempts.get(s.spec_hash, 0) < retries]
    for spec in again:
        attempts[spec.spec_hash] = attempts.get(spec.spec_hash, 0) + 1
    if again:
        attempt = max(attempts[s.spec_hash] for s in again)
        printer(f"retrying {len(again)} failed run(s) (attempt {attempt} of {retries})")
    return again


def _after_wait(busy: list[RunSpec], store: RunStore, result: GridResult, printer, poll_s: float) -> list[RunSpec]:
    """Wait until another `bench run` releases some busy specs; reuse what it completed, return the rest to run."""
    freed = wait_for_release(busy, store, printer, poll_s)
    again = plan(freed, store)
    for spec in again.done:
        result.outcomes[spec.spec_hash] = Outcome(REUSED, "completed by another `bench run`")
    return set_aside_busy(again.todo, store, result, printer)


def run_grid(specs: list[RunSpec], results_dir: str | Path, opts: RayOptions, force: bool = False,
             retries: int = 0, printer=print, wait: bool = False, poll_s: float = 2.0) -> GridResult:
    """Run every spec that lacks a completed record; re-run failed ones up to ``retries`` times; with ``wait``, wait
    for the specs another live `bench run` holds, then reuse or compute them."""
    results_dir = Path(results_dir).resolve()  # trials run elsewhere (other cwd, other nodes)
    store, t0 = RunStore(results_dir), time.time()
    planned = plan(specs, store, force)
    unique = planned.done + planned.todo
    result = GridResult(labels={s.spec_hash: s.label for s in unique})
    if planned.done:
        printer(f"{len(planned.done)} of {len(unique)} runs already completed; skipping them")
    for line in planned.stale_lines():
        printer(line)
    result.outcomes.update({s.spec_hash: Outcome(REUSED) for s in planned.done})
    todo, attempts = set_aside_busy(planned.todo, store, result, printer), {}
    forced = {s.spec_hash for s in todo} if force else set()
    while True:
        if todo:
            outcomes = run_round(todo, results_dir, opts, forced, printer)
            result.scheduled += len(todo)
            result.outcomes.update(outcomes)
            todo = _retry(todo, outcomes, attempts, retries, printer)
            forced |= {s.spec_hash for s in todo}  # a retry recomputes the failed record it left
            continue
        busy = [s for s in unique if result.outcomes[s.spec_hash].kind == BUSY]
        if not (wait and busy):
            break
        todo = _after_wait(busy, store, result, printer, poll_s)
    result.records = [r for s in unique if result.outcomes[s.spec_hash].kind != BUSY
                      and (r := store.read(s.spec_hash)) is not None]
    result.skipped = len(result.of_kind(REUSED))
    result.wall_s = time.time() - t0
    return result

"""`bench run --tracker` (bench/tracking.py): a real sweep logged to MLflow's local file store and to TensorBoard event
files, read back with MLflow's own client and tensorboardX's protobufs, number for number against the run records."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.ray_scheduler import REPORT_EVERY_S
from bench.records import RunStore
from conftest import tune_reports

BENCH = str(Path(sys.executable).with_name("bench"))
TINY = ["--set", "protocol.val_concepts=4", "--set", "train.epochs=3", "--set", "train.batch_size=64"]


def test_an_unknown_or_missing_tracker_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from bench import tracking
    from bench.cli import main

    monkeypatch.setitem(tracking.TRACKERS, "wandb", ("wandb_is_not_installed_here", "pip install wandb"))
    for name, says in (("wandb", "--tracker wandb needs the wandb_is_not_installed_here package, which is not "
                                 "installed: pip install wandb"),
                       ("neptune", "--tracker 'neptune' is not a tracker; choose from tensorboard, mlflow, wandb")):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--method", "ridge", "--subjects", "1", "--data-root", str(tmp_path / "nowhere"),
                  "--results-dir", str(tmp_path / "results"), "--tracker", f"mlflow,{name}"])
        assert exit_.value.code == 1
        assert says in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "results" / "runs").exists()  # refused before Ray, the data or any record


@pytest.mark.ray
def test_a_sweep_without_trackers_never_imports_them(ray_session, tiny_root, tmp_path):
    """bench.tracking pulls in MLflow's and W&B's Ray integrations (seconds per `bench run`): only on request. The
    adversary is a whole sweep, since Ray Tune's own callback telemetry imported them too (until
    bench.ray_scheduler._skip_callback_telemetry)."""
    code = ("import sys; from bench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('bench.tracking', 'mlflow', 'wandb', 'ray.air.integrations.mlflow') "
            "if m in sys.modules))")
    args = ["run", "--method", "ridge", "--subjects", "1", "--data-root", str(tiny_root), "--results-dir",
            str(tmp_path), "--address", ray_session, "--set", "protocol.val_concepts=4"]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(RunStore(tmp_path).records()) == 1  # the sweep did run


def test_a_trial_reports_its_first_epoch_a_resume_and_then_one_epoch_per_interval():
    from bench.ray_scheduler import EpochReports

    now, sent = [0.0], []
    reports = EpochReports(every_s=5.0, report=lambda entry, checkpoint, resumed: sent.append(entry["epoch"]),
                           clock=lambda: now[0])
    for epoch, at, resumed in ((1, 0.0, None), (2, 1.0, None), (3, 4.9, None), (4, 5.0, None), (5, 6.0, "resumed"),
                               (6, 7.0, None), (7, 10.9, None), (8, 11.0, None)):
        now[0] = at
        reports({"epoch": epoch}, Path(f"epoch-{epoch}.pt"), resumed)
    assert sent == [1, 4, 5, 8]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] from the TFRecord event files under ``folder`` (length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.ray
def test_mlflow_and_tensorboard_hold_each_runs_curves_test_metrics_and_config(ray_session, tiny_root, tmp_path,
                                                                               monkeypatch):
    from mlflow.tracking import MlflowClient

    args = [BENCH, "run", "--method", "nice,ridge", "--subjects", "1", "--data-root", str(tiny_root), "--results-dir",
            str(tmp_path), "--address", ray_session, *TINY, "--tracker", "mlflow,tensorboard", "--experiment", "probe"]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    records = {r.spec.method: r for r in RunStore(tmp_path).records()}
    assert sorted(records) == ["nice", "ridge"]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())  # the default: <results-dir>/mlruns
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("probe").experiment_id])}
    assert sorted(runs) == sorted(r.spec.label for r in records.values())
    for method, record in records.items():
        run, curve = runs[record.spec.label], record.metrics["val"]["curve"]
        assert run.info.status == "FINISHED" and run.data.tags["spec_hash"] == record.spec_hash
        for key in ("train_loss", "val_top1"):
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            want = [(e["epoch"], pytest.approx(e[key])) for e in curve if e.get(key) is not None]
            assert history == want, (method, key)  # one entry per epoch, the record's numbers
        assert len(curve) == (3 if method == "nice" else 1)
        if method == "nice":  # every epoch above, though the trial reported to Tune at most one per REPORT_EVERY_S
            running = [r["epoch"] for r in tune_reports(tmp_path, record.spec_hash) if r["status"] == "running"]
            assert running[0] == 1 and len(running) <= 1 + record.timings["train_s"] // REPORT_EVERY_S, running
        metrics = run.data.metrics
        assert metrics["test_top1"] == pytest.approx(record.metrics["top1"])
        assert metrics["test_top5"] == pytest.approx(record.metrics["top5"])
        assert metrics["selected_epoch"] == record.metrics["val"]["selected_epoch"]
        assert run.data.params["train.lr"] == json.dumps(record.spec.config["train"]["lr"])
        assert run.data.params["train.epochs"] == "3" and run.data.params["subject"] == "1"
        saved = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / method)))
        assert yaml.safe_load(saved.read_text()) == record.spec.config

    (sweep,) = (tmp_path / "tensorboard" / "probe").iterdir()
    nice = tensorboard_scalars(sweep / records["nice"].spec.label.replace(" ", "_"))
    curve = records["nice"].metrics["val"]["curve"]
    assert nice["train_loss"] == [(e["epoch"], pytest.approx(e["train_loss"])) for e in curve]
    assert nice["val_top1"] == [(e["epoch"], pytest.approx(e["val_top1"])) for e in curve]
    assert nice["test_top1"] == [(3, pytest.approx(records["nice"].metrics["top1"]))]


def wandb_records(path: Path):
    """The records of an offline run's ``run-<id>.wandb``: W&B's LevelDB-style log (a 7-byte ':W&B' header, then
    32 KiB blocks of chunks: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last)) holding
    ``wandb_internal_pb2.Record`` protobufs. wandb ≥ 0.19 ships no Python reader for its own file."""
    from wandb.proto import wandb_internal_pb2

    data, at, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if 32768 - at % 32768 < 7:  # a block's tail too short for a chunk header is padding
            at += 32768 - at % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[at:at + 7])
        chunk, at = data[at + 7:at + 7 + length], at + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.ray
def test_wandb_offline_run_holds_each_epochs_curve_and_the_test_metrics(ray_session, tiny_root, tmp_path,
                                                                        monkeypatch):
    """Offline by default and without an account: Ray's callback asks for an API key unless $WANDB_MODE says
    offline, which the adversary here leaves unset (and no key anywhere)."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc or wandb settings with a key
    args = [BENCH, "run", "--method", "nice", "--subjects", "1", "--data-root", str(tiny_root), "--results-dir",
            str(tmp_path), "--address", ray_session, *TINY, "--tracker", "wandb", "--experiment", "probe"]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    (record,) = RunStore(tmp_path).records()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # <results-dir>/wandb, offline
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.display_name == record.spec.label and run.project == "probe" and list(run.tags) == ["nice", "intra"]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    curve = record.metrics["val"]["curve"]
    assert [h["_step"] for h in history] == [e["epoch"] for e in curve] == [1, 2, 3]
    for h, e in zip(history, curve):
        assert h["train_loss"] == pytest.approx(e["train_loss"]) and h["val_top1"] == pytest.approx(e["val_top1"])
    assert history[-1]["test_top1"] == pytest.approx(record.metrics["top1"])
    assert history[-1]["selected_epoch"] == record.metrics["val"]["selected_epoch"]
    (exit_,) = [r.exit for r in records if r.HasField("exit")]
    assert exit_.exit_code == 0

"""`bench train` end to end on the tiny synthetic data, once in one process and once as DDP (accelerate launch)."""
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conftest import BENCH

PLUGIN = str(Path(__file__).with_name("plugin_methods.py"))


def bench_train(*args, cwd=None):
    return subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def only_record(results: Path) -> dict:
    (path,) = (results / "runs").glob("*.json")
    return json.loads(path.read_text())


def test_ridge_completes_above_chance_and_is_deterministic(tiny_root, tmp_path):
    args = ["train", "--method", "ridge", "--subject", "1", "--seed", "0", "--data-root", str(tiny_root),
            "--set", "protocol.val_concepts=4", "--quiet"]
    first = bench_train(*args, "--results-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stdout + first.stderr
    rec = only_record(tmp_path / "a")
    assert rec["status"] == "completed" and rec["metrics"]["top1"] > 3 * rec["metrics"]["chance_top1"]
    assert "top-1" in first.stdout and "record:" in first.stdout
    second = bench_train(*args, "--results-dir", str(tmp_path / "b"))
    assert only_record(tmp_path / "b")["metrics"] == rec["metrics"]
    again = bench_train(*args, "--results-dir", str(tmp_path / "a"))
    assert "already completed" in again.stdout


def test_bad_method_and_bad_key_are_one_line_errors(tiny_root, tmp_path):
    out = bench_train("train", "--method", "ridg", "--subject", "1", "--data-root", str(tiny_root))
    assert out.returncode == 1 and "Did you mean: ridge" in out.stderr and "Traceback" not in out.stderr
    out = bench_train("train", "--method", "ridge", "--subject", "1", "--data-root", str(tiny_root),
                      "--set", "train.lrr=1")
    assert out.returncode == 1 and "train.lr" in out.stderr


@pytest.mark.parametrize("how", ["script", "python -m bench"])
def test_the_bench_program_exits_with_its_objects_frozen_and_its_work_whole(tiny_root, tmp_path, how):
    """The `bench` script and `python -m bench` go through bench.cli.entry, which freezes the objects the command
    made out of the garbage collector before the interpreter exits; a last atexit hook sees them frozen, and the
    command's output and record are whole. An error exit goes the same way, with its code."""
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "bench"]
    assert script.value == "bench.cli:entry"
    start = ("from bench.cli import entry; entry()" if how == "script" else
             "import runpy; runpy.run_module('bench', run_name='__main__')")
    hook = "import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr))"
    args = ["train", "--method", "ridge", "--subject", "1", "--data-root", str(tiny_root), "--results-dir",
            str(tmp_path), "--set", "protocol.val_concepts=4"]
    outs = []
    for argv, code in ((args, 0), ([*args, "--set", "train.lrr=1"], 1)):
        outs.append(out := subprocess.run([sys.executable, "-c", f"{hook}\nsys.argv = ['bench', *{argv!r}]\n{start}"],
                                          capture_output=True, text=True, timeout=300))
        assert out.returncode == code, out.stdout + out.stderr
        frozen = [line for line in out.stderr.splitlines() if line.startswith("frozen ")]
        assert len(frozen) == 1 and int(frozen[0].split()[1]) > 10_000, out.stderr[-3000:]
    assert only_record(tmp_path)["status"] == "completed" and "record:" in outs[0].stdout
    assert "train.lr" in outs[1].stderr  # the error line, whole


def test_accelerate_launch_two_processes_on_cpu(tiny_root, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    # on a machine without GPUs `--multi_gpu` launches gloo processes (MULTI_CPU); `--cpu` would force one process
    out = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", BENCH, "--plugin", PLUGIN, "train",
                          "--method", "linear-contrastive", "--subject", "1", "--seed", "0",
                          "--data-root", str(tiny_root), "--results-dir", str(tmp_path), "--quiet",
                          "--set", "protocol.val_concepts=4", "--set", "train.epochs=2", "--set",
                          "train.batch_size=64"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rec = only_record(tmp_path)  # written once, by the main process
    assert rec["status"] == "completed" and rec["provenance"]["num_processes"] == 2
    assert rec["metrics"]["top1"] > rec["metrics"]["chance_top1"]

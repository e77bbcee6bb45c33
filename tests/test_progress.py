"""Sweep progress (bench/progress.py): the rate limit of piped lines and the ETAs with an injected clock, the live
table in a real pseudo-terminal, the piped output of a real sweep, and Ray's banners only with --verbose."""
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.progress import (PROGRESS_EVERY_S, LineDisplay, LiveDisplay, SweepState, TrialInfo, clock_text,
                            progress_callback)
from bench.records import RunSpec

BENCH = str(Path(sys.executable).with_name("bench"))
TINY = ["--set", "protocol.val_concepts=4", "--set", "train.epochs=3", "--set", "train.batch_size=64"]
RAY_NOISE = ("View detailed results here", "Configuration for experiment", "tensorboard --logdir", "INFO worker.py",
             "Wrote the latest version", "Started a local Ray", "Connecting to existing Ray")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def spec(subject: int, epochs: int = 30) -> RunSpec:
    return RunSpec("nice", {"train": {"epochs": epochs}}, "intra", subject, 0, "fp")


def trial(s: RunSpec, i: int):
    return SimpleNamespace(trial_id=f"t{i}", config={"trial": {"spec_hash": s.spec_hash}}, last_result=None)


def simulate(specs, concurrency, seconds_per_epoch, clock, printer, live=False):
    """Feed the real Tune callback a sweep's events: ``concurrency`` trials at a time, one epoch per step."""
    callback = progress_callback(specs, concurrency, printer, live, clock=clock)
    callback.setup()
    queue, running = [trial(s, i) for i, s in enumerate(specs)], []
    while queue or running:
        while queue and len(running) < concurrency:
            running.append([queue.pop(0), 0])
            callback.on_trial_start(0, [], running[-1][0])
        clock.now += seconds_per_epoch
        for item in list(running):
            item[1] += 1
            callback.on_trial_result(0, [], item[0], {"status": "running", "epoch": item[1], "train_loss": 2.0,
                                                      "val_top1": 10.0 + item[1]})
            if item[1] == 30:
                item[0].last_result = {"status": "completed", "top1": 12.0, "top5": 40.0, "test_selected": False}
                callback.on_trial_complete(0, [], item[0])
                running.remove(item)
    callback.on_experiment_end([])
    return callback


def progress_lines(said):
    return [(t, line) for t, line in said if "] start " not in line and "] done " not in line]


def test_piped_progress_prints_at_most_one_line_per_30_s_for_the_whole_sweep():
    clock, said = Clock(), []
    simulate([spec(1), spec(2)], 2, 2.5, clock, lambda line: said.append((clock.now, line)))  # 75 s per trial
    times = [t for t, _ in progress_lines(said)]
    assert len(times) == 2 and all(b - a >= PROGRESS_EVERY_S for a, b in zip(times, times[1:])), said
    for subject in ("sub-01", "sub-02"):  # the stalest trial gets the next line: each is heard of
        mine = [line for _, line in said if subject in line]
        assert [line.split("] ")[1].split()[0] for line in mine] == ["start", "nice", "done"], mine
    assert "sub-01 seed 0 epoch 12/30, loss 2, val top-1 22.0%" in progress_lines(said)[0][1]  # 30 s: epoch 12
    assert "sub-02 seed 0 epoch 23/30" in progress_lines(said)[1][1]  # 60 s: the other one, as it last reported
    assert said[-1][1].startswith("[2 done, 0 failed, 0 running, 0 pending")


def test_a_make_run_sized_sweep_prints_few_lines_when_piped():
    """make run: 10 trials, two at a time, 90 s each: a start and an end line per trial, and one progress line per
    30 s of the sweep (15), not two per trial (20); with the ~17 lines of summary the output stays under 60 lines."""
    clock, said = Clock(), []
    simulate([spec(s) for s in range(1, 11)], 2, 3.0, clock, lambda line: said.append((clock.now, line)))
    assert sum("] start" in line for _, line in said) == 10 and sum("] done" in line for _, line in said) == 10
    assert len(progress_lines(said)) == 5 * 90 // 30, said  # a line every 30 s of the sweep


def test_the_etas_follow_the_trials_pace_not_their_start_up():
    clock = Clock()
    state = SweepState({s.spec_hash: TrialInfo.of(s) for s in (spec(1, 10), spec(2, 10), spec(3, 10))}, 2, clock)
    run = state.start("a", spec(1, 10).spec_hash)
    assert state.trial_eta(run) is None and state.sweep_eta() is None and "ETA" not in state.header()
    clock.now += 20  # start-up: importing torch, opening the data
    state.epoch("a", {"epoch": 1})
    clock.now += 5
    state.epoch("a", {"epoch": 2})
    assert state.trial_eta(run) == pytest.approx(8 * 5)  # 5 s per epoch since the first, 8 epochs left
    clock.now += 2
    assert state.trial_eta(run) == pytest.approx(8 * 5 - 2)
    # a trial takes 27 + 38 s at this pace; 38 s of the running one and two pending ones, two at a time
    assert state.sweep_eta() == pytest.approx((38 + 2 * (27 + 38)) / 2)
    assert clock_text(3725) == "1h02m" and clock_text(65) == "1m05s" and clock_text(None) == "–"


def test_the_live_table_has_a_row_per_running_trial_and_a_footer():
    from rich.console import Console

    clock = Clock()
    specs = [spec(1, 10), spec(2, 10), RunSpec("ridge", {"train": {}}, "intra", 3, 1, "fp")]
    state = SweepState({s.spec_hash: TrialInfo.of(s) for s in specs}, 2, clock)
    state.start("a", specs[0].spec_hash)
    state.start("b", specs[2].spec_hash)
    clock.now += 30
    state.epoch("a", {"epoch": 3, "train_loss": 1.23456, "val_top1": 41.25})
    console = Console(width=120, record=True, force_terminal=False)
    console.print(LiveDisplay(state, print).table())
    text = console.export_text()
    assert re.search(r"nice\s+sub-01\s+0\s+3/10\s+1\.235\s+41\.2%\s+0m30s\s+1m10s", text), text
    # closed form: no epochs; its ETA from the pace of the others (100 s a trial)
    assert re.search(r"ridge\s+sub-03\s+1\s+–\s+–\s+–\s+0m30s\s+1m10s", text), text
    assert "0 done · 0 failed · 0 busy · 2 running · 1 pending · sweep ETA" in text


def test_the_callback_pickles_without_its_live_display():
    """Tune pickles its callbacks with the experiment: the live display's thread and console stay behind."""
    import ray.cloudpickle as cloudpickle

    callback = progress_callback([spec(1)], 1, print, live=True)
    callback.display.live = object()  # what an open display holds: not picklable
    callback.display.console = object()
    again = cloudpickle.loads(cloudpickle.dumps(callback))
    assert again.display.live is None and again.state.total == 1


# --- real sweeps -----------------------------------------------------------------------------------------------------
def run_in_pty(args, env, timeout=600):
    """Run ``args`` with a pseudo-terminal as its stdout/stderr (160 columns); return its exit code and output."""
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's end
        os.execve(args[0], args, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    out, deadline = bytearray(), time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def sweep_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TERM")}
    return {**env, "TERM": "xterm-256color", **extra}


def sweep_args(tiny_root, results, address, *more):
    return [BENCH, "run", "--method", "nice,ridge", "--subjects", "1", "--data-root", str(tiny_root), "--results-dir",
            str(results), "--address", address, *TINY, *more]


@pytest.mark.ray
def test_on_a_terminal_one_live_table_is_redrawn_in_place(ray_session, tiny_root, tmp_path):
    code, out = run_in_pty(sweep_args(tiny_root, tmp_path, ray_session), sweep_env())
    assert code == 0, out[-3000:]
    assert "\x1b[1A" in out and "\x1b[2K" in out  # cursor up, erase line: the table redrawn where it was
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n")
    assert re.search(r"method\s+subject\s+seed\s+epoch\s+loss\s+val top-1\s+elapsed\s+ETA", plain)
    assert re.search(r"nice\s+sub-01\s+0\s+[0-3]/3\s", plain), plain[-3000:]  # a running trial's row
    assert re.search(r"\d+ done · \d+ failed · \d+ busy · \d+ running · \d+ pending · sweep ETA", plain)
    finished = [line for line in plain.splitlines() if re.search(r"\] done +(nice|ridge) intra sub-01", line)]
    assert len(finished) == 2, finished  # one permanent line per finished trial, not redrawn
    assert "intra: leaderboard" in plain and not any(noise in plain for noise in RAY_NOISE)


@pytest.mark.ray
def test_piped_a_sweep_prints_a_line_per_start_and_end_and_no_ray_banners(ray_session, tiny_root, tmp_path):
    out = subprocess.run(sweep_args(tiny_root, tmp_path, ray_session), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=600, env=sweep_env(CI="true"))
    assert out.returncode == 0, out.stdout[-3000:]
    lines = out.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert [line.split("] ")[1].split()[0] for line in progress].count("start") == 2
    assert sum(bool(re.search(r"\] done +(nice|ridge)", line)) for line in progress) == 2
    assert len(progress) == 4, progress  # trials under 30 s: no progress line between start and end
    assert "\x1b[" not in out.stdout and not any(noise in out.stdout for noise in RAY_NOISE), out.stdout
    assert len(lines) < 30, out.stdout


@pytest.mark.ray
def test_verbose_shows_rays_own_output(ray_session, tiny_root, tmp_path):
    args = [BENCH, "run", "--method", "ridge", "--subjects", "1", "--data-root", str(tiny_root), "--results-dir",
            str(tmp_path), "--address", ray_session, *TINY, "--verbose"]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                         env=sweep_env(CI="true", RAY_AIR_NEW_OUTPUT="0"))  # as a quiet sweep before it leaves it
    assert out.returncode == 0, out.stdout[-3000:]
    assert "View detailed results here" in out.stdout and "Connecting to existing Ray" in out.stdout, out.stdout

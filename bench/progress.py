"""What a sweep shows while it runs: a live table on a terminal, a few lines when piped or under CI.

On a terminal (:func:`live_terminal`) one table is redrawn in place: a row per running trial (epoch, loss, validation
top-1, elapsed, ETA) and a footer with the sweep's counts and ETA; a finished trial prints a permanent line above it.
Piped, each trial prints a line when it starts and when it ends, and at most one progress line per
:data:`PROGRESS_EVERY_S` seconds in between, so a log of a long sweep stays readable.

The state (counts, running trials, ETAs) is kept apart from the two displays and reads time from an injectable clock,
so the rate limit and the ETAs are tested without waiting. The Tune callback that feeds them is built on demand
(:func:`progress_callback`) so that importing this module does not import Ray.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

from bench.records import COMPLETED, RunSpec
from bench.sweep_accounting import BUSY, DONE, FAILED, Holder

#: piped output: at most one progress line per running trial per this many seconds (start and end lines aside)
PROGRESS_EVERY_S = 30.0


def live_terminal() -> bool:
    """A live table only where someone watches it: stdout is a terminal, not under CI, not a dumb terminal."""
    return sys.stdout.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def ray_log_level(verbose: bool) -> int:
    """The driver's "ray" logger: INFO lines ("Started a local Ray instance", "Wrote the latest version of all
    result files ...") only with --verbose."""
    import logging

    return logging.INFO if verbose else logging.WARNING


def tune_verbosity(verbose: bool) -> int:
    """Tune's own reporter: off unless --verbose. Its new output engine prints the experiment banner, "View detailed
    results here" and the TensorBoard hint even at verbose=0; the legacy reporter at 0 prints nothing. Set both ways:
    an earlier quiet sweep in the same process (or the environment it handed down) must not silence a verbose one."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    return 1 if verbose else 0


def clock_text(seconds: float | None) -> str:
    """``2m05s`` (the ETA format of the progress lines), ``1h02m`` past an hour, ``–`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class TrialInfo:
    """What the table shows of a spec before its trial reports anything."""
    label: str
    name: str            # method[variant]
    subject: int
    seed: int
    epochs: int | None   # from its config; a closed-form method reports no epochs

    @classmethod
    def of(cls, spec: RunSpec) -> "TrialInfo":
        epochs = spec.config.get("train", {}).get("epochs")
        return cls(spec.label, spec.label.split(" ")[0], int(spec.subject), int(spec.seed),
                   int(epochs) if isinstance(epochs, int) else None)


@dataclass
class Running:
    info: TrialInfo
    started: float
    last_line: float            # when this trial last printed a line (piped output)
    epoch: int = 0
    first_epoch: int = 0        # the first epoch this process reported
    before: int = 0             # epochs a resumed trial had done before this process (from its checkpoint)
    first_at: float = 0.0       # when it reported that first epoch, and its latest one: the pace leaves out start-up
    last_at: float = 0.0
    loss: float | None = None
    val_top1: float | None = None


class SweepState:
    """Counts of done / failed / busy / running / pending trials, the running ones' last epoch, and ETAs."""

    def __init__(self, infos: dict[str, TrialInfo], concurrency: int, clock: Callable[[], float] = time.monotonic):
        self.infos, self.concurrency, self.clock = infos, max(1, concurrency), clock
        self.total, self.done, self.failed, self.busy = len(infos), 0, 0, 0
        self.running: dict[str, Running] = {}
        self.durations: list[float] = []

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.busy - len(self.running))

    def start(self, key: str, spec_hash: str) -> Running:
        if key not in self.running:  # a trial Tune restarts keeps its start time
            now = self.clock()
            info = self.infos.get(spec_hash) or TrialInfo(key, key, 0, 0, None)
            self.running[key] = Running(info, now, now)
        return self.running[key]

    def epoch(self, key: str, result: dict) -> Running | None:
        run = self.running.get(key)
        if run is None:
            return None
        run.epoch, run.last_at = int(result.get("epoch", run.epoch)), self.clock()
        if not run.first_epoch:
            run.first_epoch, run.first_at = run.epoch, run.last_at
            run.before = run.epoch - 1 if result.get("resumed") else 0
        run.loss = result.get("train_loss", run.loss)
        run.val_top1 = result.get("val_top1", run.val_top1)
        return run

    def end(self, key: str, kind: str) -> Running | None:
        """The trial ended: DONE (computed or reused), FAILED or BUSY (not computed: no duration)."""
        run = self.running.pop(key, None)
        setattr(self, kind, getattr(self, kind) + 1)
        if run is not None and kind != BUSY:
            self.durations.append(self.clock() - run.started)
        return run

    def trial_eta(self, run: Running) -> float | None:
        now = self.clock()
        elapsed = now - run.started
        if run.info.epochs and run.epoch:  # this trial's own pace: between its epochs once it has two
            if run.epoch > run.first_epoch:
                per_epoch = (run.last_at - run.first_at) / (run.epoch - run.first_epoch)
            else:
                per_epoch = (run.last_at - run.started) / max(1, run.epoch - run.before)
            return max(0.0, per_epoch * max(0, run.info.epochs - run.epoch) - (now - run.last_at))
        typical = self.typical()
        return None if typical is None else max(0.0, typical - elapsed)

    def typical(self) -> float | None:
        """A trial's expected duration: the mean of the finished ones, else what the running ones' pace says."""
        if self.durations:
            return sum(self.durations) / len(self.durations)
        now, paced = self.clock(), []
        for run in list(self.running.values()):  # a snapshot: the live table reads this from rich's thread
            if run.info.epochs and run.epoch:
                paced.append(now - run.started + self.trial_eta(run))
        return sum(paced) / len(paced) if paced else None

    def sweep_eta(self) -> float | None:
        typical = self.typical()
        if typical is None:
            return None
        left = [self.trial_eta(run) for run in list(self.running.values())]
        left = [typical if s is None else s for s in left]
        work = sum(left) + self.pending * typical
        return max([*left, work / self.concurrency])

    def header(self) -> str:
        """The counts every progress line starts with, e.g. ``[3 done, 0 failed, 2 running, 5 pending, ETA 2m10s]``."""
        eta = self.sweep_eta()
        busy = f"{self.busy} busy, " if self.busy else ""
        return (f"[{self.done} done, {self.failed} failed, {busy}{len(self.running)} running, {self.pending} pending"
                f"{'' if eta is None else f', ETA {clock_text(eta)}'}]")

    def progress_text(self, run: Running) -> str:
        epochs = f"/{run.info.epochs}" if run.info.epochs else ""
        loss = "" if run.loss is None else f", loss {run.loss:.4g}"
        val = "" if run.val_top1 is None else f", val top-1 {run.val_top1:.1f}%"
        return (f"{run.info.label} epoch {run.epoch}{epochs}{loss}{val} "
                f"({clock_text(self.clock() - run.started)}, ETA {clock_text(self.trial_eta(run))})")


class LineDisplay:
    """Piped output: every event as one line; at most one progress line per ``every_s`` for the whole sweep, given to
    the running trial that has gone longest without a line (so each trial gets at most one per ``every_s`` too, and a
    sweep's line count grows with its wall time, not with its concurrency)."""

    def __init__(self, state: SweepState, printer: Callable[[str], None], every_s: float = PROGRESS_EVERY_S):
        self.state, self.printer, self.every_s = state, printer, every_s
        self.last_line = -math.inf

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def event(self, message: str) -> None:
        self.printer(f"{self.state.header()} {message}")

    def progress(self, run: Running) -> None:
        now = self.state.clock()
        if now - self.last_line < self.every_s:
            return
        # a trial at its last epoch prints its end line at once
        waiting = [r for r in self.state.running.values()
                   if r.epoch and not (r.info.epochs and r.epoch >= r.info.epochs)]
        stalest = min(waiting, key=lambda r: r.last_line, default=None)
        if stalest is not None and now - stalest.last_line >= self.every_s:
            stalest.last_line = self.last_line = now
            self.event(self.state.progress_text(stalest))


class LiveDisplay:
    """A terminal: one table redrawn in place (rich's Live); events print permanently above it."""

    def __init__(self, state: SweepState, printer: Callable[[str], None], console=None):
        self.state, self.printer, self.console, self.live = state, printer, console, None

    def __getstate__(self):  # Tune pickles its callbacks: the live display and its thread stay behind
        return {**self.__dict__, "live": None, "console": None}

    def open(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.live = Live(console=self.console or Console(), get_renderable=self.table, refresh_per_second=2,
                         transient=True)
        self.live.start()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def event(self, message: str) -> None:
        line = f"{self.state.header()} {message}"
        if self.live is None:  # not opened (or closed): a plain line
            self.printer(line)
            return
        self.live.console.print(line, highlight=False, markup=False, soft_wrap=True)
        self.live.refresh()

    def progress(self, run: Running) -> None:
        if self.live is not None:
            self.live.refresh()

    def table(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        state = self.state
        table = Table(box=None, pad_edge=False)
        for column in ("method", "subject", "seed", "epoch", "loss", "val top-1", "elapsed", "ETA"):
            table.add_column(column, justify="left" if column == "method" else "right")
        now = state.clock()
        for run in sorted(list(state.running.values()), key=lambda r: r.started):
            info = run.info
            table.add_row(info.name, f"sub-{info.subject:02d}", str(info.seed),
                          f"{run.epoch}/{info.epochs}" if info.epochs else "–",
                          "–" if run.loss is None else f"{run.loss:.4g}",
                          "–" if run.val_top1 is None else f"{run.val_top1:.1f}%",
                          clock_text(now - run.started), clock_text(state.trial_eta(run)))
        footer = (f"{state.done} done · {state.failed} failed · {state.busy} busy · {len(state.running)} running · "
                  f"{state.pending} pending · sweep ETA {clock_text(state.sweep_eta())}")
        return Group(table, Text(footer, style="dim"))


def finish_message(label: str, result: dict) -> tuple[str, str]:
    """(kind, line) for a trial's last report: done / reused / failed / busy."""
    status = result.get("status")
    if status == BUSY:  # not a failure: another `bench run` is computing it
        return BUSY, f"busy  {label} ({Holder.parse(result.get('lock', ''))})"
    if status == COMPLETED:
        how = "reused" if result.get("reused") else "done "
        tag = " (TEST-SELECTED)" if result.get("test_selected") else ""
        return DONE, f"{how} {label}: top-1 {result['top1']:.1f}%, top-5 {result['top5']:.1f}%{tag}"
    return FAILED, f"FAILED {label} ({status or 'error'})"


def progress_callback(specs: list[RunSpec], concurrency: int, printer: Callable[[str], None], live: bool,
                      clock: Callable[[], float] = time.monotonic):
    """The Tune callback that feeds a :class:`SweepState` and shows it live (a terminal) or as lines (piped)."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.state = SweepState({s.spec_hash: TrialInfo.of(s) for s in specs}, concurrency, clock)
            self.display = LiveDisplay(self.state, printer) if live else LineDisplay(self.state, printer)

        def setup(self, **info):
            self.display.open()

        def on_experiment_end(self, trials, **info):
            self.display.close()

        def on_trial_start(self, iteration, trials, trial, **info):
            run = self.state.start(trial.trial_id, trial.config["trial"]["spec_hash"])
            self.display.event(f"start {run.info.label}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("resumed"):
                self.display.event(result["resumed"])
            if result.get("status") == "running" and (run := self.state.epoch(trial.trial_id, result)):
                self.display.progress(run)

        def on_trial_complete(self, iteration, trials, trial, **info):
            run = self.state.running.get(trial.trial_id)
            kind, line = finish_message(run.info.label if run else trial.trial_id, trial.last_result or {})
            self.state.end(trial.trial_id, kind)
            self.display.event(line)

        def on_trial_error(self, iteration, trials, trial, **info):
            run = self.state.end(trial.trial_id, FAILED)
            self.display.event(f"DIED  {run.info.label if run else trial.trial_id}: the trial ended without writing a "
                               f"record (see the summary)")

    return Progress()

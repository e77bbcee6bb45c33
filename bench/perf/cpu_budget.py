"""Where a Ray grid's CPU went: the trials, the driver, Ray's own processes (GCS, raylet, agents, monitors, idle
workers) and whatever else ran on the machine, against the CPU-seconds the machine had.

On a machine whose cores the trials fill, every CPU-second spent outside a trial is taken from one, so this table is
what bounds the overhead from below however the scheduler is tuned."""
from __future__ import annotations

import os
import threading
import time

import psutil

#: seconds between samples of the driver's descendants; a process that ends between two loses at most this much
SAMPLE_EVERY_S = 1.0


class CPUBudget:
    """Samples the CPU time of this process's descendants (a local Ray's daemons and workers are all below its
    driver) in a thread while a grid runs; :meth:`split` attributes it once the grid's worker pids are known."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}  # pid -> the latest CPU-seconds read
        self._before: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-budget", daemon=True)

    def __enter__(self) -> "CPUBudget":
        self._before = self._read()
        self._machine0, self._iowait0 = _machine_times()
        self._driver0, self._t0 = time.process_time(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.perf_counter() - self._t0
        self.driver_s = time.process_time() - self._driver0
        busy, iowait = _machine_times()
        self.machine_busy_s, self.iowait_s = busy - self._machine0, iowait - self._iowait0

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample()

    def _sample(self) -> None:
        self._seen.update(self._read())

    @staticmethod
    def _read() -> dict[int, float]:
        out = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system  # not children_*: a reaped worker's time would count twice
            except psutil.Error:  # ended between the listing and the read
                pass
        return out

    def split(self, trial_pids: set[int]) -> dict:
        used = {pid: cpu - self._before.get(pid, 0.0) for pid, cpu in self._seen.items()}
        trials = sum(cpu for pid, cpu in used.items() if pid in trial_pids)
        ray_own = sum(cpu for pid, cpu in used.items() if pid not in trial_pids)
        available = self.wall_s * (os.cpu_count() or 1)
        return {"cpu_available_s": available, "cpu_trials_s": trials, "cpu_driver_s": self.driver_s,
                "cpu_ray_processes_s": ray_own,
                "cpu_others_s": max(0.0, self.machine_busy_s - trials - ray_own - self.driver_s),
                "cpu_idle_s": max(0.0, available - self.machine_busy_s), "cpu_iowait_s": self.iowait_s,
                "cpu_outside_trials_pct": 100 * (self.driver_s + ray_own) / available}


def _machine_times() -> tuple[float, float]:
    """The whole machine's busy CPU-seconds since boot, and its idle seconds spent waiting for the disk (Linux only;
    0 elsewhere), from one reading."""
    t = psutil.cpu_times()
    # nice: Ray runs its workers at nice 15, and Linux counts their time there, not under user
    busy = t.user + getattr(t, "nice", 0.0) + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "iowait", 0.0)

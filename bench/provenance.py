"""Provenance for run records (the lm-evaluation-harness environment block): code, packages, device, host."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch

from bench import native
from bench.package import CHECKOUT, __version__
from bench.doctor import package_versions


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """Commit and dirty flag of the checkout this code runs from (None when installed from a wheel, even inside
    someone else's git repository, or outside a git checkout)."""
    if CHECKOUT is None:
        return {"git_commit": None, "git_dirty": None}
    repo = CHECKOUT

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_block() -> dict:
    """The CPU and the instruction set torch's kernels dispatch to (``AVX2``, ``AVX512``, …). Runs of the same spec
    and seed on CPUs of different instruction sets sum in other orders (MKL's and torch's vectorised kernels), and
    training amplifies the last-bit differences: ``make run``'s MCDB row was 35.3 ± 15.7 on an AVX-512 VM and
    36.6 ± 14.8 on an AVX2 one, same code (docs/reproducibility.md). ``native``: the C kernels this process ran
    (:mod:`bench.native`: name → compiler and flags); a kernel's PyTorch fallback rounds differently."""
    return {"model": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "native": native.loaded()}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


#: The command line of the driver that scheduled the run this process is computing (set inside a Ray trial).
_driver_command: str | None = None


def command_line() -> str:
    """The command this process was started with, as the user typed it (modulo quoting)."""
    return " ".join(sys.argv)


@contextlib.contextmanager
def driver_command(command: str | None) -> Iterator[None]:
    """Records collected within are attributed to ``command``: a Ray worker's own argv is Ray's, not the user's."""
    global _driver_command
    previous, _driver_command = _driver_command, command
    try:
        yield
    finally:
        _driver_command = previous


def collect(device: str, data_fingerprint: str, num_processes: int = 1, mixed_precision: str = "no", *,
            command: str | None = None, preprocessing: dict | None = None, dataset=None) -> dict:
    """``command``: what the user ran (default: the driver's command when inside a trial, else this process's);
    ``preprocessing``: the data root's preprocessing sidecar (``ThingsEEG.preprocessing``), None when it has none;
    ``dataset``: the opened dataset, for the ``data`` block (None when none was opened)."""
    return {"bench_version": __version__, **git_state(), "packages": package_versions(), "device": device_description(device),
            "num_processes": num_processes, "mixed_precision": mixed_precision, "data_fingerprint": data_fingerprint,
            "python": platform.python_version(), "host": socket.gethostname(),
            "command": command or _driver_command or command_line(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu": cpu_block(),
            "preprocessing": preprocessing,
            "data": data_block(dataset), "node": ray_node()}


def ray_node() -> dict | None:
    """The Ray node this process runs on (``ray_node_id``, ``ip``) and the worker's ``pid`` (warm workers serve several
    trials): on a cluster the hostname alone may not tell two nodes apart (several raylets on one machine,
    containers). None outside Ray; Ray is never imported here."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return {"ray_node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid()}
    except Exception:  # a driver whose cluster went away: the record is still written, without its node
        return None


def data_block(dataset) -> dict | None:
    """What the leaderboard must know of a run's data to compare it with published numbers: whether it is synthetic
    and how many test images it scores against. None when no dataset was opened (a setup failure); a dataset that
    cannot tell (a test double) leaves the field None, so the leaderboard falls back to the config."""
    if dataset is None:
        return None
    synthetic, n_test = getattr(dataset, "is_synthetic", None), getattr(dataset, "n_test_images", None)
    return {"synthetic": synthetic if isinstance(synthetic, bool) else None,
            "n_test_images": int(n_test) if isinstance(n_test, int) else None}

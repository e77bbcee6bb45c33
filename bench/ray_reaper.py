"""Stops the local Ray a `bench run` started once that driver is gone, even after ``kill -9``.

Ray ties its GCS server and raylet to the driver (PR_SET_PDEATHSIG), but the raylet's children do not share that
fate: the dashboard and runtime-env agents poll for their parent and linger for a minute or two, and workers take
seconds. :func:`bench.ray_scheduler.init_ray` starts this process before it starts Ray, in a session of its own so
that Ctrl-C or a signal to the driver's process group does not reach it, and tells it the Ray session folder on its
stdin. When the driver is gone (end of file on stdin: the kernel closes the pipe however the driver ended; or this
process re-parented), it SIGKILLs, until none is left, every process that either writes its stdout or stderr to a log
file of that session (Ray's workers, and their own children, which inherit it) or has a file of that session open and
is in the driver's process group (the raylet's agents: their stdio are pipes to the raylet, but Ray starts them without
a process group of their own).

What it may touch: only sessions whose folder is named after the driver's pid (Ray names a session after the process
that started it) and that were created after this reaper started; a cluster joined with ``--address``, another
user's or another driver's is never matched. Standalone (standard library only) so that it starts in milliseconds:

    python ray_reaper.py DRIVER_PID RAY_TEMP_ROOT
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

POLL_S = 1.0        # how often the parent is checked when the pipe is quiet
QUIET_SCANS = 3     # consecutive scans that find nothing before the reaper stops
GIVE_UP_S = 30.0    # a process that survives SIGKILL this long is not ours to wait for
DRIVER_EXIT_S = 10.0  # how long a driver that closed the pipe may take to exit before the reaper goes on


def session_started_after(session: Path, since: float) -> bool:
    """Whether the session's name (session_<date>_<time>_<micros>_<pid>) says it began after ``since``."""
    try:
        date, clock = session.name.split("_")[1:3]
        return time.mktime(time.strptime(f"{date} {clock}", "%Y-%m-%d %H-%M-%S")) >= int(since) - 1
    except (ValueError, IndexError):
        return False


def owned_sessions(told: set[str], temp_root: str, driver: int, since: float) -> list[Path]:
    """The sessions this driver started: those it named, and (killed during ray.init) those named after its pid."""
    found = {Path(p) for p in told} | set(Path(temp_root).glob(f"session_*_{driver}"))
    return sorted(p for p in found if p.name.endswith(f"_{driver}") and session_started_after(p, since))


def opens_under(pid: str, folders: list[str], fds=None) -> bool:
    """Whether process ``pid`` has one of ``fds`` (default: any) open on a file under one of ``folders``."""
    try:
        names = [str(fd) for fd in fds] if fds else os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to inspect: then not ours to kill either
        return False
    for fd in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(folder) for folder in folders):
            return True
    return False


def in_group(pid: str, pgid: int | None) -> bool:
    try:
        return pgid is not None and os.getpgid(int(pid)) == pgid
    except OSError:
        return False


def reap(sessions: list[Path], pgid: int | None = None, spare: int | None = None) -> int:
    """SIGKILL every process of these sessions (see the module's docstring) until a few scans find none; never
    ``spare`` (the driver: still finishing its exit, it has the session's files open and is in its own group)."""
    logs, folders = [f"{s}/logs/" for s in sessions], [f"{s}/" for s in sessions]
    killed, quiet, deadline, exempt = 0, 0, time.time() + GIVE_UP_S, {str(os.getpid()), str(spare)}
    while logs and quiet < QUIET_SCANS and time.time() < deadline:
        victims = [p for p in os.listdir("/proc") if p.isdigit() and p not in exempt and (
            opens_under(p, logs, fds=(1, 2)) or (in_group(p, pgid) and opens_under(p, folders)))]
        for pid in victims:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        quiet = 0 if victims else quiet + 1
        time.sleep(0.2)
    return killed


def wait_for_driver(driver: int) -> set[str]:
    """Block until the driver is gone; return the session folders it announced ("session PATH" lines)."""
    told, buffer = set(), b""
    while True:
        ready, _, _ = select.select([0], [], [], POLL_S)
        if not ready:
            if os.getppid() != driver:  # re-parented: the driver died although something still holds the pipe
                return told
            continue
        chunk = os.read(0, 4096)
        if not chunk:
            return told
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        told |= {line[8:].decode() for line in lines if line.startswith(b"session ")}


def wait_until_gone(pid: int, timeout_s: float = DRIVER_EXIT_S) -> None:
    """The pipe closes while the driver's interpreter is still shutting down (the end of `bench run`): let it end,
    so that Ray's own shutdown runs first and the reaper only collects what is left."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet collected by its parent
                    return
        except OSError:
            return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    driver, temp_root, since = int(argv[1]), argv[2], time.time()
    try:
        pgid = os.getpgid(driver)  # read now: once the driver is gone its group can only be read off its members
    except OSError:
        pgid = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the user's Ctrl-C is for the driver, which shuts Ray down itself
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    told = wait_for_driver(driver)
    wait_until_gone(driver)
    reap(owned_sessions(told, temp_root, driver, since), pgid, spare=driver)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

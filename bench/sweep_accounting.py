"""What became of each spec of a sweep: done, reused, failed (it raised, or its process died) or busy.

Ray only schedules; a trial writes its own record. A trial whose process dies (``os._exit``, a signal, the OOM killer)
writes none, and Ray says only that "the actor died": :func:`settle_lost_trial` then writes the ``failed`` record in
the driver, with Ray's error text, the exit code or signal where the trial's log shows one, and the log's last lines,
so the run is retried under ``--retries``, counted in the summary and in the leaderboard like any failed run.

Dead or busy: a spec's lock is an ``flock`` on ``runs/.locks/<hash>.lock`` (:meth:`bench.records.RunStore.claim`), and
the kernel releases it when the process holding it ends, however it ends. A lock that can be taken has no live holder;
one that cannot is held by a live process. A trial stamps the lock with its driver (pid and host) while it computes,
so a busy spec names the `bench run` that holds it, and a lock still held by a leftover child of one of *this*
driver's dead trials is not mistaken for another `bench run`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.records import RunRecord, RunSpec, RunStore

DONE, REUSED, FAILED, BUSY = "done", "reused", "failed", "busy"
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 64 * 1024
#: what a trial prints before ``os._exit``: Ray reports a dead worker's exit status nowhere, so the trial says it
EXIT_NOTE = "bench: trial process {pid} calls os._exit({code}) at {where}"
_EXIT_NOTE = re.compile(r"bench: trial process \d+ calls os\._exit\((-?\d+)\) at (.*)")
#: faulthandler's words for the fatal signals it reports in a Ray worker's stderr
_FATAL = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
          "Floating-point exception": "SIGFPE", "Illegal instruction": "SIGILL"}


@dataclass
class Outcome:
    kind: str          # DONE | REUSED | FAILED | BUSY
    reason: str = ""   # FAILED: why; BUSY: who holds the lock


# --- locks -------------------------------------------------------------------------------------------------------
def lock_path(store: RunStore, spec_hash: str) -> Path:
    return store.runs_dir / ".locks" / f"{spec_hash}.lock"


def driver_stamp() -> str:
    return f"driver {os.getpid()} {socket.gethostname()}"


def stamp_lock(store: RunStore, spec_hash: str, stamp: str) -> None:
    """Called by a trial while it holds the lock (RunStore.claim wrote the trial's pid): add its driver's stamp."""
    with open(lock_path(store, spec_hash), "a") as fh:
        fh.write(f"{stamp}\n")


@dataclass
class Holder:
    pid: int | None = None
    driver_pid: int | None = None
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Holder":
        lines = text.split("\n")
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        stamp = next((line.split() for line in lines[1:] if line.startswith("driver ")), [])
        return cls(pid, int(stamp[1]) if len(stamp) > 1 and stamp[1].isdigit() else None,
                   stamp[2] if len(stamp) > 2 else None)

    def ours(self) -> bool:
        return self.driver_pid == os.getpid() and self.host == socket.gethostname()

    def __str__(self) -> str:
        who = f"pid {self.pid}" if self.pid else "a live process"
        if self.driver_pid:
            where = "" if self.host == socket.gethostname() else f" on {self.host}"
            return f"held by {who}, a trial of `bench run` pid {self.driver_pid}{where}"
        return f"held by {who}"


def lock_holder(store: RunStore, spec_hash: str) -> Holder | None:
    """Who holds the spec's lock; None when no live process does. The probe holds the lock for an instant."""
    path = lock_path(store, spec_hash)
    if not path.is_file():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return Holder.parse(fh.read())
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


# --- a trial that died ----------------------------------------------------------------------------------------------
class TrialDied(RuntimeError):
    """A trial ended without writing its record (its process died, or it raised outside the run)."""


@contextlib.contextmanager
def exit_notes():
    """While a trial computes, ``os._exit(n)`` first prints where and with which code (see :data:`EXIT_NOTE`)."""
    real = os._exit

    def noting_exit(code):
        caller = sys._getframe(1)
        try:
            print(EXIT_NOTE.format(pid=os.getpid(), code=int(code),
                                   where=f"{caller.f_code.co_filename}:{caller.f_lineno}"), file=sys.stderr, flush=True)
        finally:
            real(code)

    os._exit = noting_exit
    try:
        yield
    finally:
        os._exit = real


@dataclass
class Death:
    message: str                       # one line: what happened, as precisely as is known
    ray_error: str = ""                # Ray's error text for the trial
    exit_code: int | None = None
    signal: str | None = None
    log_tail: list[str] = field(default_factory=list)


def worker_log_tail(pid: int | None, logs_dir: Path | None) -> list[str]:
    """The last lines of a Ray worker's stderr and stdout logs on this node (empty where they are not here)."""
    if pid is None or logs_dir is None:
        return []
    lines = []
    for suffix in ("err", "out"):
        for path in sorted(logs_dir.glob(f"worker-*-{pid}.{suffix}")):
            with open(path, "rb") as fh:  # a worker's log may be large: its end is enough
                fh.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                text = fh.read().decode(errors="replace").splitlines()
            body = [line for line in text if line.strip() and not line.startswith((":job_id:", ":actor_name:"))]
            lines += [f"[{suffix}] {line}" for line in body[-LOG_TAIL_LINES:]]
    return lines


def describe_death(error_text: str, logs_dir: Path | None) -> Death:
    """Turn Ray's error for a trial that wrote no record into the record's reason: exit code, signal, log tail."""
    pid = re.search(r"\bpid[:=]?\s*(\d+)", error_text, re.IGNORECASE)
    ip = re.search(r"\bip[:=]?\s*([0-9a-fA-F.:]+)", error_text)
    tail = worker_log_tail(int(pid.group(1)) if pid else None, logs_dir)
    died = "actor died" in error_text.lower() or "ActorDiedError" in error_text or "RayActorError" in error_text
    if not died:
        first = next((line for line in reversed(error_text.strip().splitlines()) if line.strip()), "no error text")
        return Death(f"the trial ended without a record: {first.strip()}", error_text, log_tail=tail)
    who = f"trial process {pid.group(1)}" if pid else "the trial's process"
    exit_code, sig, how = None, None, "exit status not reported by Ray (e.g. SIGKILL from the OOM killer)"
    for line in tail:
        if (note := _EXIT_NOTE.search(line)):
            exit_code, how = int(note.group(1)), f"exit code {note.group(1)} (os._exit at {note.group(2)})"
        elif (fatal := re.search(r"Fatal Python error: (" + "|".join(_FATAL) + ")", line)):
            sig = _FATAL[fatal.group(1)]
            how = f"signal {sig}"
    if not tail and ip:
        how += f"; its log is on node {ip.group(1)}"
    return Death(f"{who} died without writing a record: {how}", error_text, exit_code, sig, tail)


def death_record(spec: RunSpec, death: Death, code_digest: str | None) -> RunRecord:
    """The ``failed`` record of a trial that died, as :func:`bench.execute.record_setup_failure` writes one."""
    from bench import provenance
    from bench.execute import failed_record

    record = failed_record(spec, TrialDied(death.message))
    record.error.update(traceback=death.ray_error, exit_code=death.exit_code, signal=death.signal,
                        log_tail=death.log_tail)
    record.code_fingerprint = code_digest
    # written by the driver: its node is not where the trial died (Ray's error text, the traceback, names that one)
    record.provenance = {**provenance.collect("cpu", spec.data_fingerprint), "finished_at": provenance.now(),
                         "node": None}
    return record


def settle_lost_trial(spec: RunSpec, store: RunStore, death: Death, code_digest: str | None) -> Outcome:
    """A trial ended without reporting a record: record it failed, unless another live process now holds the spec."""
    with store.claim(spec) as claimed:
        if not claimed:
            holder = Holder.parse(lock_path(store, spec.spec_hash).read_text())
            if not holder.ours():  # another `bench run` took the spec after our trial died: it is computing it
                return Outcome(BUSY, str(holder))
            # else a leftover child of our own dead trial keeps the lock open: the spec is still ours to record
        if code_digest is not None and store.is_current(spec, code_digest):
            return Outcome(DONE)  # the record was written before the process died
        store.write(death_record(spec, death, code_digest))
        return Outcome(FAILED, death.message)


# --- waiting for another `bench run` --------------------------------------------------------------------------------
WAIT_REPORT_S = 30.0  # a "still waiting" line this often, so a long wait is visibly alive


def wait_for_release(busy: list[RunSpec], store: RunStore, printer, poll_s: float = 2.0) -> list[RunSpec]:
    """Poll the busy specs' locks every ``poll_s`` until at least one has no live holder; return those."""
    start, last = time.time(), None
    while True:
        holders = {s.spec_hash: lock_holder(store, s.spec_hash) for s in busy}
        freed = [s for s in busy if holders[s.spec_hash] is None]
        waited = time.time() - start
        if freed:
            printer(f"{len(freed)} of {len(busy)} busy run(s) released after {waited:.0f} s: "
                    f"{', '.join(s.label for s in freed)}")
            return freed
        if last is None or time.time() - last >= WAIT_REPORT_S:
            last = time.time()
            owners = sorted({str(h) for h in holders.values()})
            printer(f"waiting for {len(busy)} run(s) another `bench run` is computing ({'; '.join(owners)}), "
                    f"checking every {poll_s:g} s; {waited:.0f} s so far")
        time.sleep(poll_s)

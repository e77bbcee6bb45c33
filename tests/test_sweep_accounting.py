"""Nothing lost, nothing hidden (issue 18): a trial whose process dies becomes a failed record that is retried and
counted; a spec another live process holds is busy, not failed, and `--wait` reuses it (or computes it if that process
dies); `kill -9` of `bench run` leaves no process of its Ray behind."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.grid import SweepRequest, run_sweep
from bench.ray_reaper import owned_sessions, reap
from bench.ray_scheduler import RayOptions, settle
from bench.records import RunStore
from bench.sweep_accounting import BUSY, DONE, FAILED, REUSED, Holder, describe_death, driver_stamp, lock_holder
from conftest import BENCH

PLUGIN = Path(__file__).with_name("sweep_plugin_methods.py")
QUICK = "protocol.val_concepts=4"


def cli(capsys, *args: str) -> tuple[int, str]:
    """`bench ARGS` in this process (so it joins the session's Ray through --address): exit code and output."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def flat(text: str) -> str:
    return " ".join(text.split())  # rich folds long lines


def board_row(text: str, method: str) -> dict[str, str]:
    """The markdown leaderboard's row of ``method``, by column name."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    row = next(line for line in lines if line.startswith(f"| {method} "))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    return dict(zip(cells(header), cells(row)))


# --- a trial whose process dies -------------------------------------------------------------------------------------
@pytest.mark.ray
def test_a_trial_whose_process_dies_is_recorded_failed_retried_and_counted(ray_session, tiny_root, tmp_path, capsys):
    counted, results = tmp_path / "attempts.txt", tmp_path / "results"
    code, out = cli(capsys, "--plugin", str(PLUGIN), "run", "--method", "ridge-exit", "--subjects", "1,2",
                    "--data-root", str(tiny_root), "--results-dir", str(results), "--address", ray_session,
                    "--retries", "1", "--set", QUICK, "--set", f"method.counted_file={counted}")
    assert code == 1, out
    out = flat(out)
    records = {r.spec.subject: r for r in RunStore(results).records()}
    assert records[1].status == "completed"
    died = records[2]
    assert died.status == "failed" and died.error["type"] == "TrialDied"
    assert died.error["exit_code"] == 3 and "exit code 3" in died.error["message"]
    assert "sweep_plugin_methods.py" in died.error["message"]  # where os._exit was called
    assert "ActorDiedError" in died.error["traceback"]  # Ray's own words are kept
    assert any("about to leave with os._exit(3)" in line for line in died.error["log_tail"])
    assert died.code_fingerprint == records[1].code_fingerprint  # one leaderboard row, not a row of its own
    assert len(counted.read_text().splitlines()) == 2  # the first attempt and the one retry both died
    assert "retrying 1 failed run(s) (attempt 1 of 1)" in out
    assert "2 run(s) in" in out and "1 done, 0 reused, 1 failed, 0 busy" in out
    assert "failed ridge-exit intra sub-02 seed 0: trial process" in out and "exit code 3" in out

    code, board = cli(capsys, "leaderboard", "--results-dir", str(results))
    row = board_row(board, "ridge-exit")  # the expected grid includes the dead trial: not "2/2 complete"
    assert code == 0 and row["Subjects"] == "1/2" and row["Failed"] == "1" and "failed: sub-02" in row["Notes"], row


def test_a_death_is_described_by_exit_code_signal_or_what_ray_said(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker-ab-01000000-4242.err").write_text(":job_id:01000000\n:actor_name:ImplicitFunc\nloading\n"
                                                      "Fatal Python error: Segmentation fault\n")
    ray_error = "ActorDiedError: The actor died unexpectedly before finishing this task.\n\tpid: 4242\n\tip: 10.0.0.9"
    segv = describe_death(ray_error, logs)
    assert segv.signal == "SIGSEGV" and "signal SIGSEGV" in segv.message and segv.exit_code is None
    assert segv.log_tail == ["[err] loading", "[err] Fatal Python error: Segmentation fault"]
    oom = describe_death(ray_error.replace("4242", "4343"), logs)  # no log here: a worker on another node
    assert "exit status not reported by Ray" in oom.message and "its log is on node 10.0.0.9" in oom.message
    raised = describe_death("RayTaskError(ValueError): bad things\nValueError: bad things", logs)
    assert raised.message == "the trial ended without a record: ValueError: bad things"


def test_a_trial_that_reports_busy_is_busy_unless_the_holder_is_this_driver(tmp_path):
    from types import SimpleNamespace

    from bench.records import RunSpec

    spec = RunSpec("ridge", {"method": {}}, "intra", 1, 0, "data")
    other = SimpleNamespace(metrics={"status": "busy", "lock": "4242\ndriver 4200 elsewhere\n"}, error=None)
    outcome = settle(spec, other, RunStore(tmp_path))
    assert outcome.kind == BUSY and outcome.reason == "held by pid 4242, a trial of `bench run` pid 4200 on elsewhere"
    assert Holder.parse(f"4242\n{driver_stamp()}\n").ours() and not Holder.parse("4242\n").ours()


# --- busy is not failure --------------------------------------------------------------------------------------------
def _hold_sub02(tiny_root: Path, results: Path, counted: Path, gate: Path) -> subprocess.Popen:
    """`bench train` of sub-02 that holds the spec's lock until ``gate`` exists: another live process computing it."""
    helper = subprocess.Popen([BENCH, "--plugin", str(PLUGIN), "train", "--method", "ridge-counted", "--subject", "2",
                               "--data-root", str(tiny_root), "--results-dir", str(results), "--quiet",
                               "--set", QUICK, "--set", f"method.counted_file={counted}", "--set",
                               f"method.gate={gate}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not (counted.is_file() and "sub-02" in counted.read_text()):  # inside the computation: the lock is held
        assert helper.poll() is None and time.time() < deadline, helper.communicate()[0]
        time.sleep(0.2)
    return helper


def _sweep(tiny_root, results, counted, gate, subjects, printer, **kw):
    req = SweepRequest(methods=["ridge-counted"], subjects=subjects, seeds="0", data_root=tiny_root,
                       results_dir=results, sets=(QUICK, f"method.counted_file={counted}", f"method.gate={gate}"),
                       **kw)
    return run_sweep(req, RayOptions(max_concurrent=1), printer=printer)


@pytest.mark.ray
def test_a_spec_another_live_process_holds_is_busy_not_failed_and_wait_reuses_it(ray_session, tiny_root, tmp_path,
                                                                                 capsys):
    from bench.registry import load_plugin

    load_plugin(PLUGIN)
    results, counted, gate = tmp_path / "results", tmp_path / "computed.txt", tmp_path / "gate"
    helper = _hold_sub02(tiny_root, results, counted, gate)
    try:
        code, out = cli(capsys, "--plugin", str(PLUGIN), "run", "--method", "ridge-counted", "--subjects", "2",
                        "--data-root", str(tiny_root), "--results-dir", str(results), "--address", ray_session,
                        "--set", QUICK, "--set", f"method.counted_file={counted}", "--set", f"method.gate={gate}")
        assert code == 0, out
        out = flat(out)
        assert f"busy ridge-counted intra sub-02 seed 0: held by pid {helper.pid}" in out
        assert "0 done, 0 reused, 0 failed, 1 busy" in out and "FAILED" not in out and "failed ridge" not in out

        lines = []

        def printer(msg):  # the other process finishes only once this sweep is waiting for it
            lines.append(msg)
            if msg.startswith("waiting for"):
                gate.touch()

        result = _sweep(tiny_root, results, counted, gate, "1,2", printer, wait=True)
    finally:
        gate.touch()
        helper_out = helper.communicate(timeout=120)[0]
    assert helper.returncode == 0, helper_out
    kinds = {label.split()[2]: kind for kind in (DONE, REUSED, FAILED, BUSY) for label, _ in result.of_kind(kind)}
    assert kinds == {"sub-01": DONE, "sub-02": REUSED}, lines
    assert any(m.startswith("1 of 1 busy run(s) released") for m in lines), lines
    assert sorted(line.split()[1] for line in counted.read_text().splitlines()) == ["sub-01", "sub-02"]  # once each
    assert all(r.status == "completed" for r in RunStore(results).records())


@pytest.mark.ray
def test_wait_computes_a_spec_whose_holder_died(ray_session, tiny_root, tmp_path):
    from bench.registry import load_plugin

    load_plugin(PLUGIN)
    results, counted, gate = tmp_path / "results", tmp_path / "computed.txt", tmp_path / "gate"
    helper = _hold_sub02(tiny_root, results, counted, gate)
    lines, helper_pid = [], helper.pid  # Tune pickles the printer with its callback: no Popen in the closure

    def printer(msg):  # the other process dies (kill -9) while this sweep waits for it
        lines.append(msg)
        if msg.startswith("waiting for"):
            os.kill(helper_pid, signal.SIGKILL)
            gate.touch()  # this sweep's own run of sub-02 must not wait

    try:
        result = _sweep(tiny_root, results, counted, gate, "2", printer, wait=True)
    finally:
        helper.kill()
        helper.wait()
    assert [kind for kind in (DONE, REUSED, FAILED, BUSY) if result.of_kind(kind)] == [DONE], lines
    assert len(counted.read_text().splitlines()) == 2  # the dead helper's attempt, then this sweep's
    (record,) = RunStore(results).records()
    assert record.status == "completed"


def test_a_lock_left_by_a_dead_process_is_not_busy(tmp_path):
    store = RunStore(tmp_path)
    path = store.runs_dir / ".locks" / "abc.lock"
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fh = open({str(path)!r}, 'a+'); fcntl.flock(fh, fcntl.LOCK_EX); fh.write(f'{{os.getpid()}}\\n"
        "driver 77 somewhere\\n'); fh.flush(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        held = lock_holder(store, "abc")
        assert held is not None and held.pid == holder.pid and held.driver_pid == 77 and held.host == "somewhere"
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(store, "abc") is None  # the file and its pid remain; the lock died with its holder


# --- kill -9 of the driver ------------------------------------------------------------------------------------------
def processes_under(root: str) -> dict[int, str]:
    """Live processes whose command line, open files or environment mention ``root`` (not this test process)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = Path(f"/proc/{pid}/environ").read_bytes()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        if int(pid) != os.getpid() and (root in cmd or root.encode() in env or any(root in x for x in links)):
            found[int(pid)] = cmd[:100]
    return found


@pytest.mark.ray
def test_kill_9_of_bench_run_leaves_no_process_of_its_ray(tiny_root, tmp_path):
    """`bench run` starts its own local Ray (under a private RAY_TMPDIR); SIGKILL it mid-trial; within 10 s nothing
    that mentions that folder may be left (Ray's own agents would linger a minute or two)."""
    root = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    counted, log = tmp_path / "computed.txt", tmp_path / "bench-run.log"
    cmd = [BENCH, "--plugin", str(PLUGIN), "run", "--method", "ridge-counted", "--subjects", "2",
           "--data-root", str(tiny_root), "--results-dir", str(tmp_path / "results"), "--set", QUICK,
           "--set", f"method.counted_file={counted}", "--set", f"method.gate={tmp_path / 'never'}"]
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env={**os.environ, "RAY_TMPDIR": root}, stdout=out, stderr=subprocess.STDOUT)
    left = {}
    try:
        deadline = time.time() + 240
        while not counted.is_file():  # the trial is computing: Ray is fully up
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        before = processes_under(root)
        assert len(before) >= 5, before  # driver, GCS, raylet, agents, the trial's worker, ...
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 10
        while (left := processes_under(root)) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        for pid in processes_under(root):  # never leave them to the rest of the suite
            os.kill(pid, signal.SIGKILL)
        driver.kill()
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"still alive 10 s after kill -9 of bench run: {left} (of {before})"


def test_the_reaper_touches_only_its_drivers_sessions(tmp_path):
    now = time.strftime("%Y-%m-%d_%H-%M-%S")
    ours, other, old = (tmp_path / f"session_{now}_123456_4242", tmp_path / f"session_{now}_123456_999",
                        tmp_path / "session_2020-01-01_00-00-00_000001_4242")
    for session in (ours, other, old):
        (session / "logs").mkdir(parents=True)
    assert owned_sessions(set(), str(tmp_path), 4242, time.time() - 5) == [ours]  # by pid and by start time
    assert owned_sessions({str(other)}, str(tmp_path), 4242, time.time() - 5) == [ours]  # even if told

    def sleeper(session: Path, how: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", f"exec {how}{session}/logs/some.log; exec sleep 60"], **kw)

    worker = sleeper(ours, ">", start_new_session=True)     # stdout in our session's logs: Ray's workers
    agent = sleeper(ours, "3>")                               # a log open, in the driver's group: Ray's agents
    reader = sleeper(ours, "3<", start_new_session=True)    # a log open elsewhere: e.g. someone's `tail -f`
    stranger = sleeper(other, ">", start_new_session=True)  # another driver's worker
    driver = sleeper(ours, "3>")  # the driver itself, still exiting: in its group with a session file open
    time.sleep(0.5)  # let bash open the files and exec
    try:
        assert reap([ours], os.getpgid(0), spare=driver.pid) == 2
        assert worker.wait(timeout=5) == -signal.SIGKILL and agent.wait(timeout=5) == -signal.SIGKILL
        assert reader.poll() is None and stranger.poll() is None and driver.poll() is None
    finally:
        for proc in (worker, agent, reader, stranger, driver):
            proc.kill()
            proc.wait()

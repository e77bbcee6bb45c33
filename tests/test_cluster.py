"""`bench run --address` on a real multi-node Ray cluster on this machine (tests/ray_nodes.py): trials on both nodes,
each record naming its node, a node lost mid-sweep whose trial resumes on the survivor from its last epoch checkpoint,
and the shared-storage check refusing a node that cannot see the results folder.

The cluster runs in its own process (not the session-wide Ray of conftest), and `bench run` joins it as a user would.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.checkpoint import peek_epoch
from conftest import BENCH
from test_resume import kill_session, process_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NODES = str(Path(__file__).with_name("ray_nodes.py"))
SETS = ["protocol.val_concepts=4", "train.epochs=8", "train.batch_size=16", "train.num_threads=1"]


class Nodes:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        line = proc.stdout.readline()
        assert line, "the cluster helper ended before printing its nodes"
        info = json.loads(line)
        self.address, self.nodes = info["address"], info["nodes"]

    def node_of_pid(self, pid: int) -> str | None:
        """The name of the node whose raylet started ``pid`` (Ray workers are the raylet's children)."""
        raylets = {n["raylet_pid"]: name for name, n in self.nodes.items()}
        table = process_table()
        while pid in table and pid not in raylets:
            pid = table[pid][0]
        return raylets.get(pid)

    def remove(self, name: str) -> None:
        self.proc.stdin.write(f"remove {name}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == f"removed {name}"


@contextmanager
def ray_nodes(*args: str, prefix=()):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([*prefix, sys.executable, NODES, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    try:
        yield Nodes(proc)
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            kill_session(proc)


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def lock_pid(results: Path, spec_hash: str) -> int | None:
    try:
        first = (results / "runs" / ".locks" / f"{spec_hash}.lock").read_text().split("\n")[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    """Until process ``pid`` has stopped (gone or a zombie): a worker outlives its raylet's SIGKILL by a moment, and
    may write one more checkpoint in it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process_table().get(pid, (0, 0, "X"))[2] in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"trial process {pid} still runs {timeout:.0f} s after its node was killed")


def running_on(nodes: Nodes, results: Path, name: str, min_epoch: int) -> str | None:
    """A spec without a record whose trial runs on node ``name`` and has checkpointed ``min_epoch`` epochs."""
    done = records(results)
    for path in (results / "runs" / ".checkpoints").glob("*.pt"):
        pid = lock_pid(results, path.stem)
        if path.stem not in done and pid and nodes.node_of_pid(pid) == name and (peek_epoch(path) or 0) >= min_epoch:
            return path.stem
    return None


def test_a_sweep_lands_on_both_nodes_and_survives_losing_one(tiny_root, tmp_path):
    """4 NICE runs on a head and a worker node (1 CPU each). After the worker has completed a run, it is SIGKILLed
    (raylet and all) while its second run is at epoch >= 2: that trial restarts on the head (--max-failures 1) and
    resumes from its last epoch checkpoint. Every spec ends with one completed record; nothing is recomputed."""
    with ray_nodes("head", "worker") as nodes:
        ids = {name: n["node_id"] for name, n in nodes.nodes.items()}
        cmd = [BENCH, "run", "--method", "nice", "--subjects", "1,2", "--seeds", "0,1", "--data-root", str(tiny_root),
               "--results-dir", str(tmp_path), "--address", nodes.address, "--max-failures", "1",
               *[a for s in SETS for a in ("--set", s)]]
        log = open(tmp_path / "run.log", "w+")
        run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            victim, deadline = None, time.time() + 300
            while victim is None:
                assert run.poll() is None and time.time() < deadline, "no second trial on the worker node to kill"
                on_worker = [r for r in records(tmp_path).values() if (r["provenance"]["node"] or {}).get(
                    "ray_node_id") == ids["worker"]]
                victim = running_on(nodes, tmp_path, "worker", 2) if on_worker else None
                time.sleep(0.05)
            pid = lock_pid(tmp_path, victim)
            nodes.remove("worker")
            wait_gone(pid)
            saved = peek_epoch(tmp_path / "runs" / ".checkpoints" / f"{victim}.pt")
            before = {h: (tmp_path / "runs" / f"{h}.json").stat().st_mtime_ns for h in records(tmp_path)}
            assert run.wait(timeout=300) == 0
        finally:
            if run.poll() is None:
                kill_session(run)
        log.seek(0)
        out = log.read()
    done = records(tmp_path)
    assert len(done) == 4 and all(r["status"] == "completed" for r in done.values()), out[-3000:]
    ran_on = {h: r["provenance"]["node"]["ray_node_id"] for h, r in done.items()}
    assert set(ran_on.values()) == {ids["head"], ids["worker"]}  # placed on both nodes, and the records say so
    assert ran_on[victim] == ids["head"]  # rescheduled on the survivor
    assert [r["epoch"] for r in done[victim]["provenance"]["resumed"]] == [saved + 1]  # from its last checkpoint
    label = f"nice intra sub-{done[victim]['subject']:02d} seed {done[victim]['seed']}"
    assert f"resumed {label} at epoch {saved + 1} of 8 from " in out
    assert [e["epoch"] for e in done[victim]["metrics"]["val"]["curve"]] == list(range(1, 9))
    assert all("resumed" not in r["provenance"] for h, r in done.items() if h != victim)  # the others ran once
    for spec_hash, mtime in before.items():  # records completed before the loss were not computed again
        assert (tmp_path / "runs" / f"{spec_hash}.json").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "runs" / ".checkpoints").glob("*.pt"))


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_node_that_cannot_see_the_results_folder_is_named_before_any_trial(tiny_root, tmp_path):
    """The second node is started in its own mount namespace with an empty tmpfs over the results folder: the same
    path, other contents, as on a machine that lacks the shared mount. `bench run` must refuse, naming that node."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs",
                            str(results)], capture_output=True)  # the mount lives and dies with that namespace
    if probe.returncode != 0:
        pytest.skip(f"unprivileged mount namespaces are not allowed here: {probe.stderr.decode().strip()}")
    with ray_nodes("head") as head:
        island_prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                         'mount -t tmpfs tmpfs "$0" && exec "$@"', str(results)]
        with ray_nodes("join", head.address, "island", prefix=island_prefix) as island:
            out = subprocess.run([BENCH, "run", "--method", "ridge", "--subjects", "1", "--data-root", str(tiny_root),
                                  "--results-dir", str(results), "--address", head.address,
                                  "--set", "protocol.val_concepts=4"], capture_output=True, text=True, timeout=300)
            island_id = island.nodes["island"]["node_id"]
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert f"results folder {results} is not visible on node(s) " in said, said
    assert f"(node id {island_id[:12]})" in said and f"(node id {head.nodes['head']['node_id'][:12]})" not in said
    assert not list((results / "runs").glob("*.json")) and not (results / "ray").exists()  # refused before any trial


def test_without_address_a_sweep_starts_a_ray_of_its_own_beside_a_running_cluster(tiny_root, tmp_path):
    """A cluster someone left running on this machine (Ray records it in /tmp/ray/ray_current_cluster): a plain
    `bench run` must not join it (ray.init would, and then refuse num_cpus) but start its own local Ray."""
    with ray_nodes("head") as nodes:
        cluster_ids = {n["node_id"] for n in nodes.nodes.values()}
        out = subprocess.run([BENCH, "run", "--method", "ridge", "--subjects", "1", "--data-root", str(tiny_root),
                              "--results-dir", str(tmp_path), "--set", "protocol.val_concepts=4"],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (record,) = records(tmp_path).values()
    assert record["status"] == "completed"
    assert record["provenance"]["node"]["ray_node_id"] not in cluster_ids

"""A Ray cluster of real nodes on this machine for the cluster tests, driven over stdin (run as a script).

``python ray_nodes.py head NAME...``: a head node and one worker node per NAME (``ray.cluster_utils.Cluster``, 1 CPU
and a custom resource ``NAME`` each), or ``python ray_nodes.py join GCS_ADDRESS NAME``: one more node joining a
running cluster from this process (started under another mount namespace, it sees other files than the driver).
Prints one JSON line: the GCS address, each node's Ray node id and its raylet's pid. Then reads commands:
``remove NAME`` SIGKILLs that node's raylet and Ray processes, as a machine that dies would lose them (answers
``removed NAME``); end of input or ``quit`` stops every node it started.

GCS health checks every 0.5 s (failing after 2 misses) let Ray notice a dead node in about a second instead of 15.
"""
import json
import sys

import ray
from ray._private.node import Node
from ray._private.parameter import RayParams
from ray.cluster_utils import Cluster

FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 2,
                          "health_check_initial_delay_ms": 0}
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 ** 2}


def describe(nodes: dict) -> dict:
    return {name: {"node_id": node.node_id, "raylet_pid": node.all_processes["raylet"][0].process.pid}
            for name, node in nodes.items()}


def start_head(names: list[str]) -> tuple[dict, str, callable]:
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "resources": {"head": 1}, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
    nodes = {"head": cluster.head_node}
    for name in names:
        nodes[name] = cluster.add_node(**NODE, resources={name: 1})
    cluster.wait_for_nodes()

    def remove(name: str) -> None:
        cluster.remove_node(nodes.pop(name), allow_graceful=False)

    return nodes, cluster.address, (remove, cluster.shutdown)


def join(address: str, name: str) -> tuple[dict, str, callable]:
    params = RayParams(gcs_address=address, resources={name: 1}, include_log_monitor=False, node_manager_port=0,
                       min_worker_port=0, max_worker_port=0, **NODE)
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)

    def stop() -> None:
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)

    return {name: node}, address, (lambda _name: stop(), stop)


def main() -> None:
    kind, *args = sys.argv[1:]
    nodes, address, (remove, stop) = start_head(args) if kind == "head" else join(args[0], args[1])
    print(json.dumps({"address": address, "nodes": describe(nodes)}), flush=True)
    try:
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["remove"]:
                remove(command[1])
                print(f"removed {command[1]}", flush=True)
            elif command[:1] == ["quit"]:
                break
    finally:
        stop()
        ray.shutdown()


if __name__ == "__main__":
    main()

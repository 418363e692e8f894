"""A real multi-node Ray cluster on this machine: a head and worker nodes, each its own ``ray start
--block`` process on loopback with its own declared CPUs, as users form one across machines (one
``ray start`` per machine). Used by tests/test_score_ray.py and benchmarks/bench_ray.py.

Ray's own ``ray.cluster_utils.Cluster`` starts its nodes inside the calling process's Ray session;
the point here is separate processes that can be killed one at a time, a raylet like a lost machine.
Tear-down kills every process each node started (found through psutil before the kill), so nothing
is left behind even when the test or benchmark fails. The cluster keeps its sessions and address file
in a temporary folder of its own (RAY_TMPDIR), so that ``--address auto`` finds this cluster and no
other Ray instance on the machine (a test running beside it) finds it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil

# token authentication is for clusters reachable from a network; a loopback test cluster opts out,
# and every node and driver must agree on it
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       # a dead node is declared dead after about 3 s instead of 30 s
       "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "5",
       "RAY_health_check_initial_delay_ms": "500"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


class LocalCluster:
    """``with LocalCluster(workers=2) as c:`` then drivers join with ``--address c.address``."""

    def __init__(self, workers: int, cpus_per_worker: int = 1, head_cpus: int = 0, log_dir: Optional[Path] = None):
        self.workers, self.cpus, self.head_cpus = workers, cpus_per_worker, head_cpus
        self.address = f"127.0.0.1:{_free_port()}"
        self.log_dir = log_dir
        self.nodes: list[subprocess.Popen] = []  # head first
        # short: Ray's socket paths under it must stay within the OS limit (107 bytes)
        self.tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self._seen: set[psutil.Process] = set()

    @property
    def env(self) -> dict[str, str]:
        """The environment a driver joining this cluster runs with."""
        return {**os.environ, **self._env, "RAY_ADDRESS": self.address}

    @property
    def _env(self) -> dict[str, str]:
        """What every node and driver of this cluster shares."""
        return {**ENV, "RAY_TMPDIR": self.tmp}

    def __enter__(self) -> "LocalCluster":
        try:
            self._start(["--head", f"--port={self.address.split(':')[1]}", f"--num-cpus={self.head_cpus}",
                         "--include-dashboard=false"], "head")
            self._wait(1)
            for k in range(self.workers):
                self.add_worker(k)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_worker(self, k: int) -> subprocess.Popen:
        node = self._start([f"--address={self.address}", f"--num-cpus={self.cpus}",
                            f'--resources={{"worker{k}": 1}}'], f"worker{k}")
        self._wait(len(self.nodes))
        return node

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.log", "ab") if self.log_dir else subprocess.DEVNULL
        node = subprocess.Popen([_ray_bin(), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args], env={**os.environ, **self._env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> int:
        """Nodes the head counts as active (``ray status``: the state API needs the dashboard)."""
        proc = subprocess.run([_ray_bin(), "status", "--address", self.address], env=self.env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or "Active:" not in proc.stdout:
            return 0
        active = proc.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if " node_" in line)

    def _wait(self, nodes: int, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._remember()
            if any(n.poll() is not None for n in self.nodes):
                raise RuntimeError(f"a ray start process exited early (logs: {self.log_dir})")
            if self.alive_nodes() >= nodes:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{nodes} Ray nodes did not come up in {timeout:.0f}s")

    def _remember(self) -> None:
        for node in self.nodes:
            try:
                parent = psutil.Process(node.pid)
                self._seen.update([parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass

    def processes(self, node: subprocess.Popen, needle: str) -> list[psutil.Process]:
        """The node's running processes whose command line holds ``needle`` (exited and zombie ones skipped)."""
        found = []
        for child in psutil.Process(node.pid).children(recursive=True):
            try:
                if needle in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass
        return found

    def raylet(self, node: subprocess.Popen) -> psutil.Process:
        """The raylet that ``ray start`` process runs (the node's own process; killing it is losing the node)."""
        for child in self.processes(node, "raylet"):
            try:
                if child.name() == "raylet":
                    return child
            except psutil.Error:
                pass
        raise RuntimeError(f"no raylet under ray start pid {node.pid}")

    def kill_node(self, node: subprocess.Popen) -> None:
        """SIGKILL the node's raylet, as a lost machine; its ``ray start --block`` then stops the rest."""
        self._remember()
        self.raylet(node).kill()

    def stop(self) -> None:
        """Kill every process the nodes started (workers first, head last) and wait for them."""
        self._remember()
        for node in reversed(self.nodes):
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in list(self._seen):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self._seen), timeout=30)
        for node in self.nodes:
            node.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)  # sessions, logs Ray kept there, the address file

    def leftovers(self) -> list[int]:
        """Pids of this cluster's processes still running (none after ``stop``)."""
        left = []
        for p in self._seen:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
            except psutil.Error:
                pass
        return left

"""Multi-worker training: the ``TF_CONFIG`` a worker reads, a bounded wait for the cluster,
and a launcher that runs ``N`` local workers (``sinet train --workers N``).

``TF_CONFIG`` is TensorFlow's cluster description, one JSON object per process::

    {"cluster": {"worker": ["host0:12345", "host1:12345"]},
     "task": {"type": "worker", "index": 0}}

Worker 0 (or a task of type ``chief``, when the cluster has one) is the chief: it writes the
run's files; every worker computes its own slices of every global batch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ClusterError", "CLUSTER_TIMEOUT_ENV", "check_global_batches", "cluster_watchdog", "free_ports",
           "global_batch_error", "launch_local_workers", "read_tf_config"]

CLUSTER_TIMEOUT_ENV = "SINET_CLUSTER_TIMEOUT"
DEFAULT_CLUSTER_TIMEOUT_S = 300.0


class ClusterError(ValueError):
    """A malformed ``TF_CONFIG`` or a cluster that does not come up."""


def read_tf_config(text: str | None = None) -> dict:
    """The parsed ``TF_CONFIG`` (default: the environment's), checked: JSON, a ``cluster``
    mapping task types to lists of ``host:port`` addresses, and a ``task`` whose type is in
    the cluster and whose index is within it. Errors name what is wrong."""
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ClusterError("strategy 'multiworker' needs the TF_CONFIG environment variable (cluster and task of "
                           "this worker), e.g. "
                           '\'{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", '
                           '"index": 0}}\'; for workers on this machine use sinet train --workers N')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG is not JSON ({e.msg} at character {e.pos}): {text[:80]!r}") from None
    if not isinstance(config, dict):
        raise ClusterError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterError("TF_CONFIG: 'cluster' must map task types to address lists, e.g. "
                           '{"worker": ["host0:2222", "host1:2222"]}')
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ClusterError(f"TF_CONFIG: cluster[{kind!r}] must be a non-empty list of host:port addresses")
        for a in addresses:
            host, _, port = str(a).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ClusterError(f"TF_CONFIG: cluster[{kind!r}] address {a!r} is not host:port")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterError("TF_CONFIG: 'task' must give this worker's type and index, e.g. "
                           '{"type": "worker", "index": 0}')
    if task["type"] not in cluster:
        raise ClusterError(f"TF_CONFIG: task type {task['type']!r} is not in the cluster ({', '.join(cluster)})")
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ClusterError(f"TF_CONFIG: task index {task['index']!r} is out of range for "
                           f"{len(cluster[task['type']])} {task['type']} address(es)")
    return config


# The watchdog runs in a process of its own: while TensorFlow waits for the cluster, this
# process sits in C++ holding the interpreter lock, so no Python thread or signal handler of
# its own can run.
_WATCHDOG = r"""
import json, os, signal, socket, sys, time
pid, timeout, config = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(0)
me = (config["task"]["type"], config["task"]["index"])
missing = []
for kind, addresses in config["cluster"].items():
    for i, a in enumerate(addresses):
        if (kind, i) == me:
            continue
        host, _, port = a.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except OSError:
            missing.append(f"{kind}:{i} ({a})")
missing = missing or ["(every address answers, but a task did not join)"]
print(f"sinet train: error: {me[0]}:{me[1]} waited {timeout:g} s for the cluster in TF_CONFIG; not reachable: "
      f"{', '.join(missing)} (start every worker, check the addresses and firewalls, or raise "
      f"SINET_CLUSTER_TIMEOUT); stopping this worker", file=sys.stderr, flush=True)
os.kill(pid, signal.SIGKILL)
"""


class cluster_watchdog:
    """Bounds the wait for the cluster: if the block (creating the multi-worker strategy and
    its first collective, which wait for every task to join) has not finished after
    ``timeout`` seconds (default ``$SINET_CLUSTER_TIMEOUT`` or 300), a watchdog process
    prints which tasks do not answer and stops this process (SIGKILL: TensorFlow's wait has
    no bound and cannot be interrupted from Python; exit status 137)."""

    def __init__(self, config: dict, timeout: float | None = None):
        self.config = config
        if timeout is None:
            raw = os.environ.get(CLUSTER_TIMEOUT_ENV, str(DEFAULT_CLUSTER_TIMEOUT_S))
            try:
                timeout = float(raw)
            except ValueError:
                raise ClusterError(f"{CLUSTER_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
        if timeout <= 0:
            raise ClusterError(f"{CLUSTER_TIMEOUT_ENV} must be positive, got {timeout}")
        self.timeout = timeout
        self._proc = None

    def __enter__(self):
        self._proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout),
                                       json.dumps(self.config)])
        return self

    def __exit__(self, *exc):
        self._proc.kill()
        self._proc.wait()
        return False


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _terminate(procs, grace: float = 10.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def global_batch_error(stage, replicas: int, note: str = "") -> str | None:
    """Why ``stage``'s global batch cannot be split evenly among ``replicas`` (``note``: more
    said in the parentheses), or None when it can."""
    if stage.batch_size % replicas == 0:
        return None
    return (f"stage {stage.name!r}: batch_size {stage.batch_size} does not divide into {replicas} replicas "
            f"({stage.batch_size} / {replicas} = {stage.batch_size / replicas:g} examples each{note}); "
            "the batch size is global")


def check_global_batches(config, workers: int) -> None:
    """Refuse a stage whose global batch does not split evenly into ``workers`` replicas (each
    local worker holds at least one), before any worker process starts; each worker checks
    its exact replica count again once the cluster is up (:func:`global_batch_error`)."""
    for stage in config.stages:
        if message := global_batch_error(stage, workers, ", one replica per worker"):
            raise ClusterError(message)


def launch_local_workers(train_args: list[str], workers: int, log_dir: str | os.PathLike | None = None,
                         poll_s: float = 0.5, config=None) -> int:
    """Run ``sinet train TRAIN_ARGS --strategy multiworker`` as ``workers`` processes on this
    machine (127.0.0.1, free ports), each with its ``TF_CONFIG``. The chief's output goes to
    this terminal, the others' to ``LOG_DIR/worker-<i>.log`` (default: a temporary folder,
    removed when all succeed). When one worker fails, the others are stopped: the exit code
    is the first failure's. ``config``: the run's recipe (:class:`sinet_tf.train.TrainConfig`),
    checked before any worker starts (:func:`check_global_batches`). Returns the exit code."""
    if workers < 2:
        raise ClusterError(f"--workers {workers}: a multi-worker run needs at least 2 workers")
    if config is not None:
        check_global_batches(config, workers)
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    own_logs = log_dir is None
    logs = Path(tempfile.mkdtemp(prefix="sinet-workers-") if own_logs else log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            cmd = [sys.executable, "-m", "sinet_tf.cli", "train", *train_args, "--strategy", "multiworker"]
            if i == 0:
                procs.append(subprocess.Popen(cmd, env=env))
            else:
                f = open(logs / f"worker-{i}.log", "wb")
                files.append(f)
                procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                _terminate(procs)
                where = "" if i == 0 else f"; its output: {logs / f'worker-{i}.log'}"
                print(f"sinet train: worker {i} exited with code {code}; stopped the others{where}",
                      file=sys.stderr, flush=True)
                own_logs = False  # keep the logs of a failed run
                return code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _terminate(procs)
        raise
    finally:
        for f in files:
            f.close()
        if own_logs:
            shutil.rmtree(logs, ignore_errors=True)

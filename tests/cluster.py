"""Real stand-ins for a cluster on one machine: MLflow servers, Ray nodes started with
``ray start``, and nodes whose processes see the machine differently (``unshare -m`` with a
private /etc/hosts or a private mount), as a worker on another machine would. Every process
started here runs in its own session and is stopped by its process group, never by name."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
       "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("RAY_ADDRESS", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def can_unshare() -> bool:
    """Whether this process may make private mount namespaces (root, and a kernel that allows it)."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


def in_namespace(command: list[str], hosts: Path | None = None, mounts: tuple[tuple[Path, Path], ...] = ()) -> list[str]:
    """``command`` run with a private mount namespace: ``hosts`` over /etc/hosts, each (source,
    target) of ``mounts`` bound over target: what that process sees differs from this one."""
    binds = [f"mount --bind {shlex.quote(str(hosts))} /etc/hosts"] if hosts else []
    binds += [f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}" for src, dst in mounts]
    script = " && ".join(binds + ["exec " + shlex.join(command)])
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


class Processes:
    """Processes started in their own sessions; ``stop_all`` kills each one's process group."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], log: Path, env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
        proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd,
                                env=env or ENV, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


def mlflow_server(procs: Processes, host: str, port: int, folder: Path, allowed: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return procs.start([str(BIN / "mlflow"), "server", "--host", host, "--port", str(port), "--workers", "1",
                        "--allowed-hosts", allowed, "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                        "--artifacts-destination", str(folder / "artifacts")], folder / "server.log")


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None, f"{url}: the server ended (rc {proc.returncode})"
            assert time.time() < deadline, f"{url}: no answer after {timeout} s"
            time.sleep(0.5)


def ray_node(procs: Processes, log: Path, head_port: int, head: bool, cpus: int, wrap=None,
             env: dict | None = None, gpus: int = 0) -> subprocess.Popen:
    """A Ray node via ``ray start --block`` (head, or joining the head at ``head_port``); ``gpus``:
    GPUs it declares, whether or not the machine has them (the stand-in for a GPU node)."""
    command = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(cpus), "--disable-usage-stats"]
    command += ["--num-gpus", str(gpus)] if gpus else []
    if head:
        # A short temp folder: Ray's socket paths must fit in 107 characters.
        command += ["--head", "--port", str(head_port), "--include-dashboard", "false",
                    "--temp-dir", tempfile.mkdtemp(prefix="r9", dir="/tmp")]
    else:
        command += ["--address", f"127.0.0.1:{head_port}"]
    return procs.start(wrap(command) if wrap else command, log, env=env)


def nodes(head_port: int) -> list[dict]:
    """The cluster's live nodes, asked by a separate driver (this test process stays Ray-free)."""
    code = ("import json, ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
            "print(json.dumps([{k: n[k] for k in ('NodeID', 'NodeManagerPort', 'Alive', 'Resources')} "
            "for n in ray.nodes() if n['Alive']]))" % head_port)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for_nodes(head_port: int, count: int, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        found = nodes(head_port)
        if len(found) >= count:
            return found
        assert time.time() < deadline, f"{len(found)} of {count} Ray nodes after {timeout} s"
        time.sleep(1)


def raylet_pid(node: subprocess.Popen) -> int:
    """The pid of the raylet that ``node`` (a ``ray_node`` started here) runs: its descendant."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            exe = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue
        parents[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), exe)
    for pid, (_, exe) in parents.items():
        ancestor = pid
        while ancestor in parents and ancestor != node.pid:
            ancestor = parents[ancestor][0]
        if ancestor == node.pid and exe.endswith(b"/raylet"):
            return pid
    raise AssertionError(f"no raylet under the Ray node of pid {node.pid}")

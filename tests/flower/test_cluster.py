"""fogsim on an existing Ray cluster: two nodes started with ``ray start`` on this machine.

The run attaches to the cluster and leaves it running; the test then stops exactly that
cluster by its own process ids (``ray stop`` would stop every Ray on the machine). Its
processes are the ones carrying a marker in their environment (set for ``ray start``
only) and their descendants.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.study.results import load

pytestmark = pytest.mark.slow  # real Flower + Ray runs

RAY_CLI = Path(sys.executable).with_name("ray")  # the CLI of the Ray this test imports
runner = CliRunner()


def live_processes() -> dict[int, int]:
    """Parent pid of every live (not zombie) process, by pid."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
                if state != "Z":
                    procs[int(entry.name)] = int(ppid)
    return procs


def with_descendants(roots: set[int], procs: dict[int, int]) -> set[int]:
    found = roots & procs.keys()
    while more := {pid for pid, ppid in procs.items() if ppid in found} - found:
        found |= more
    return found


def command_name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def free_port_block(n: int) -> int:
    """First of ``n`` consecutive free TCP ports, above Ray's default worker ports
    (10002-19999) and below Linux's ephemeral range, so no concurrent Ray takes them."""

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                return False
            return True

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        if all(free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports in 20000-32000")


class Cluster:
    """A head and a worker node (1 CPU each) on this machine, with their own ports and
    temp dir. Ray registers ``--node-ip-address=127.0.0.1`` as the machine's IP."""

    def __init__(self) -> None:
        # Ray's socket paths must stay short: the temp dir sits directly under /tmp.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fsc-", dir="/tmp"))
        self.marker = f"FOGSIM_TEST_CLUSTER={self.temp_dir}".encode()
        n = 2 + 2 * 26  # the head's GCS and client server, then per node: see _start
        base = free_port_block(n)
        ports = iter(range(base, base + n))
        self.port = next(ports)
        self.address = f"127.0.0.1:{self.port}"
        try:
            self._start(
                ["--head", f"--port={self.port}", f"--ray-client-server-port={next(ports)}"]
                + ["--include-dashboard=false"],
                ports,
            )
            self._start([f"--address={self.address}"], ports)
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], ports: Iterator[int]) -> None:
        node_ports = [next(ports) for _ in range(6)]
        workers = [next(ports) for _ in range(20)]
        cmd = [str(RAY_CLI), "start", *args]
        cmd += ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={self.temp_dir}"]
        cmd.append("--disable-usage-stats")
        for flag, port in zip(
            ["node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc"]
            + ["runtime-env-agent", "metrics-export"],
            node_ports,
            strict=True,
        ):
            cmd.append(f"--{flag}-port={port}")
        cmd += [f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]
        # a cluster as a user starts it: without this checkout on PYTHONPATH, so the
        # workers find fogsim only through the driver (Flower's runtime_env)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        env["FOGSIM_TEST_CLUSTER"] = str(self.temp_dir)
        started = subprocess.run(
            cmd, env=env, cwd=self.temp_dir, capture_output=True, text=True, timeout=120
        )
        if started.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{started.stdout}\n{started.stderr}")

    def processes(self) -> set[int]:
        """Live processes of this cluster."""
        procs = live_processes()
        marked = set()
        for pid in procs:
            with contextlib.suppress(OSError):
                if self.marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    marked.add(pid)
        return with_descendants(marked, procs)

    def daemons(self) -> set[int]:
        """Its GCS server and raylets (worker processes come and go)."""
        return {p for p in self.processes() if command_name(p) in ("gcs_server", "raylet")}

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL what is left after ``grace_s`` (as ``ray stop`` does)."""
        deadline = time.monotonic() + grace_s
        sig = signal.SIGTERM
        while (pids := self.processes()) and time.monotonic() < deadline + 10:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.5)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class DescendantWatch:
    """Command names of every process that descends from this one while the block runs."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            pids = with_descendants({os.getpid()}, live_processes()) - {os.getpid()}
            self.seen |= {command_name(pid) for pid in pids}

    def __enter__(self) -> DescendantWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.skipif(
    not RAY_CLI.exists(), reason=f"no `ray` CLI next to {sys.executable} to start a cluster with"
)
def test_run_attaches_to_an_existing_two_node_cluster(
    cluster: Cluster, tiny_scenario: Path, tmp_path: Path
) -> None:
    import ray
    from ray._private import state  # the GCS's job and actor tables (no dashboard needed)

    # the scenario field; --ray-address is the CLI's way to set the same
    with tiny_scenario.open("a") as f:
        f.write(f'ray_address = "{cluster.address}"\nround_timeout_s = 120\n')
    daemons = cluster.daemons()
    assert len(daemons) == 3, "a GCS server and two raylets"
    with DescendantWatch() as watch:
        result = runner.invoke(
            app, ["run", str(tiny_scenario), "--out", str(tmp_path / "r"), "--quiet"]
        )
    assert result.exit_code == 0, result.output
    rounds = load(tmp_path / "r")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["sampled"] == r["aggregated"] == 4 and r["failed"] == 0 for r in rounds)
    assert rounds[-1]["accuracy"] > 0.5
    assert not watch.seen & {"raylet", "gcs_server"}, f"fogsim started a Ray: {watch.seen}"

    # the cluster outlived the run, and ran the run's client actors on both its nodes
    assert cluster.daemons() == daemons, "the run stopped the cluster"
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        me = ray.get_runtime_context().get_job_id()
        (job,) = [j for j in state.jobs() if j["DriverPid"] == os.getpid() and j["JobID"] != me]
        actors = [a for a in state.actors().values() if a["JobID"] == job["JobID"]]
    finally:
        ray.shutdown()
    assert len(nodes) == 2
    assert {a["ActorClassName"] for a in actors} == {"ClientAppActor"}
    assert len(actors) == 2, "one 1-CPU client actor per 1-CPU node"
    assert {a["Address"]["NodeID"] for a in actors} == nodes

    cluster.stop()
    assert cluster.processes() == set()


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port"])
def test_unreachable_ray_address_is_a_clear_error(
    address: str, tiny_scenario: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = runner.invoke(
        app, ["run", str(tiny_scenario), "--out", str(tmp_path / "r"), "--ray-address", address]
    )
    assert result.exit_code == 2, result.output
    assert address in result.output and "Traceback" not in result.output
    assert time.monotonic() - started < 30
    assert not (tmp_path / "r").exists()

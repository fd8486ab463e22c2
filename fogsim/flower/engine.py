"""The one place that launches Flower: a change of Flower's launch API touches here only.

Runs the scenario's ``ServerApp`` and ``ClientApp`` on Flower's simulation engine with
the Ray backend: a local Ray started for the run (its session files in a temporary
directory removed afterwards), or an existing cluster when ``ray_address`` is given.

On an existing cluster fogsim only connects and disconnects: it passes Ray no resources
or temp dir and never stops the cluster. Flower hands the driver's ``sys.path`` to the
workers as ``PYTHONPATH`` (a ``runtime_env``), so they import the driver's ``fogsim``
and ``clients`` wherever those paths exist, e.g. a source checkout on the same machine.

Ctrl-C (SIGINT) or SIGTERM stops the run after the round in progress, which is then
on disk and resumable; a second one stops at once. (Left to Python's default, Ctrl-C
interrupts Flower's engine thread while its ServerApp thread waits on replies that
never come: the process hangs.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.supercore.object_ref import load_app

from fogsim.flower.server_app import ProgressFn, make_server_app
from fogsim.scenario import Scenario, SimulationSection

CLIENT_APP = "clients.fog_client:app"  # every fleet node's ClientApp, as Flower names apps


def _quiet_environment(run_dir: Path) -> None:
    """Telemetry off (no network), Flower's home under the run, Ray warnings silenced."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_HOME", str(run_dir.resolve() / ".flwr"))
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


class RayClusterError(ConnectionError):
    """No Ray cluster answers at the address the run should attach to."""


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast unless a Ray cluster's head answers at ``address`` (``HOST:PORT``).

    ``ray.init`` would retry an address where nothing answers for many minutes.
    """
    from ray._raylet import GcsClient  # private; what `ray health-check` connects with
    from ray.exceptions import RpcError

    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise RayClusterError(
            f"Ray address {address!r}: expected HOST:PORT of a Ray head node, "
            "e.g. 127.0.0.1:6379 (the --port of `ray start --head`)"
        )
    try:
        # a refused or unroutable port fails here at once, not after GcsClient's 35 s
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        GcsClient(address=address)  # something else listening fails here
    except (OSError, RpcError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RayClusterError(
            f"no Ray cluster at {address} ({reason}): start one there with "
            f"`ray start --head --port={port}`, or leave out --ray-address and "
            "[simulation] ray_address to run on a local Ray started for the run"
        ) from None


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc): Ray's processes under a run, to stop them
    at once or (``benchmarks/scale.py``) to measure them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


RAY_TMP_PREFIX = "fogsim-ray-"  # a local Ray's session files: <tmp>/fogsim-ray-XXXX/


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _processes_using(directory: Path) -> list[int]:
    """Processes whose command line or open files name ``directory``."""
    mark, found = str(directory), []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if mark in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
                continue
            for fd in proc.joinpath("fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(mark):
                        found.append(int(proc.name))
                        break
    return found


def clean_stale_ray(tmp_root: Path | None = None) -> list[int]:
    """Stop what a dead fogsim run left of its local Ray, remove its session files, and
    return the process ids stopped.

    A run killed outright (``kill -9``) cannot stop its Ray: the raylet's dashboard and
    runtime-env agents outlive it (~190 MB). A session directory is named after the
    process that started Ray (``session_<date>_<time>_<us>_<pid>``), so a fogsim Ray
    directory whose sessions' drivers are all gone is stale; a run still starting (no
    session yet) or alive is left alone."""
    root = tmp_root or Path(tempfile.gettempdir())
    stopped: list[int] = []
    for directory in root.glob(RAY_TMP_PREFIX + "*"):
        owners = [s.name.rsplit("_", 1)[-1] for s in directory.glob("session_*")]
        pids = [int(p) for p in owners if p.isdigit()]
        if not pids or any(_alive(p) for p in pids):
            continue
        for pid in _processes_using(directory):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                stopped.append(pid)
        shutil.rmtree(directory, ignore_errors=True)
    return stopped


@contextlib.contextmanager
def stop_on_signal(stop: threading.Event, continue_with: str = "") -> Iterator[None]:
    """The first SIGINT/SIGTERM sets ``stop`` (the round loop ends after the round in
    progress) and says at once how to continue (``continue_with``); a second one kills
    Ray's processes and exits at once.

    Said at once, because the process may not live to the end of the round: a SIGTERM
    sent to the whole process group (a batch scheduler's) reaches Ray's raylet too, and
    when the driver next writes to the raylet's object store, Ray ends the driver
    (exit 1) before fogsim can say a word. Ray blocks SIGINT in its processes, so
    Ctrl-C in a terminal does not."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            print(
                "\nstopping now: the round in progress is lost, the finished ones are on "
                "disk (resume with --resume)",
                file=sys.stderr,
                flush=True,
            )
            for pid in descendants(os.getpid()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            os._exit(128 + signum)
        stop.set()
        print(
            "\nstopping after the round in progress (press Ctrl-C again to stop now); "
            "finished rounds are on disk"
            + (f", to continue: {continue_with}" if continue_with else ""),
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def simulate(
    scenario: Scenario,
    run_dir: Path,
    *,
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
    verbose: bool = False,
    resume: bool = False,
    continue_with: str = "",
) -> bool:
    """Run ``scenario``, writing results into ``run_dir`` (continuing from its
    checkpoint when ``resume``); False if a signal stopped it before the last round
    (``continue_with``: the command that continues it, said when the signal comes).

    Raises ``RayClusterError`` when ``ray_address`` (or the scenario's) answers nothing.
    """
    stop = threading.Event()
    launch(
        make_server_app(scenario, run_dir, progress, resume, stop),
        load_app(CLIENT_APP, LookupError),
        scenario.simulation.flower_nodes,  # mailboxes, not fleet nodes (strategies.base)
        scenario.simulation,
        run_dir,
        ray_address=ray_address,
        verbose=verbose,
        stop=stop,
        continue_with=continue_with,
    )
    return not stop.is_set()


def launch(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    sim: SimulationSection,
    run_dir: Path,
    *,
    ray_address: str | None = None,
    verbose: bool = False,
    stop: threading.Event | None = None,
    continue_with: str = "",
) -> None:
    """Run any ServerApp/ClientApp pair on ``num_nodes`` Flower nodes with ``sim``'s Ray
    resources (also how ``benchmarks/scale.py`` runs plain Flower, on equal terms);
    a first SIGINT/SIGTERM sets ``stop`` (see :func:`stop_on_signal`).

    Each client actor reserves ``sim.cpus_per_client`` Ray CPUs, so a local Ray (given
    every core) runs ``floor(cores / cpus_per_client)`` actors at once."""
    address = ray_address or sim.ray_address
    if address:
        check_ray_address(address)
    _quiet_environment(run_dir)
    from flwr.simulation import run_simulation  # heavy import, deferred

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    init_args: dict = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,  # "Started a local..."
    }
    ray_tmp = None
    if address:
        init_args["address"] = address
    else:
        # Ray's socket paths must stay short, so its session lives in a short temp dir.
        clean_stale_ray()
        ray_tmp = tempfile.mkdtemp(prefix=RAY_TMP_PREFIX)
        init_args["_temp_dir"] = ray_tmp
        init_args["num_cpus"] = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": sim.cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }
    import ray

    try:
        if not ray.is_initialized():
            # Flower's Ray backend would start Ray itself (the same arguments, the same
            # PYTHONPATH for the actors), but ray.init replaces the process's SIGTERM
            # handler: started here, before stop_on_signal, SIGTERM stops the run after
            # its round as SIGINT does, instead of aborting it mid-round
            path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
            os.environ["PYTHONPATH"] = path
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, **init_args)
        with stop_on_signal(stop or threading.Event(), continue_with):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_nodes,
                backend_name="ray",
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()  # on an existing cluster: disconnects, the cluster stays up
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)

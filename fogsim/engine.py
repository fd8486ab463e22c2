"""The one place that launches Flower: a change of Flower's launch API touches here only.

Runs the scenario's ``ServerApp`` and ``ClientApp`` on Flower's simulation engine with
the Ray backend: a local Ray started for the run (its session files in a temporary
directory removed afterwards), or an existing cluster when ``ray_address`` is given.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from fogsim.scenario import Scenario
from fogsim.server import ProgressFn, make_server_app


def _quiet_environment(run_dir: Path) -> None:
    """Telemetry off (no network), Flower's home under the run, Ray warnings silenced."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_HOME", str(run_dir.resolve() / ".flwr"))
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _HideInjectedCrashes(logging.Filter):
    """Flower logs each client exception with its traceback; crashes that ``[faults]``
    injected on purpose are counted in the results instead (real ones still show)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "injected crash of node" not in record.getMessage()


def simulate(
    scenario: Scenario,
    run_dir: Path,
    *,
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> None:
    """Run ``scenario`` to completion, writing results into ``run_dir`` (continuing
    from its checkpoint when ``resume``)."""
    _quiet_environment(run_dir)
    from flwr.simulation import run_simulation  # heavy import, deferred

    from clients.fog_client import make_client_app

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose and not any(isinstance(f, _HideInjectedCrashes) for f in flwr_logger.filters):
        flwr_logger.addFilter(_HideInjectedCrashes())
    sim = scenario.simulation
    address = ray_address or sim.ray_address
    init_args: dict = {"include_dashboard": False, "log_to_driver": verbose}
    ray_tmp = None
    if address:
        init_args["address"] = address
    else:
        # Ray's socket paths must stay short, so its session lives in a short temp dir.
        ray_tmp = tempfile.mkdtemp(prefix="fogsim-ray-")
        init_args["_temp_dir"] = ray_tmp
        init_args["num_cpus"] = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": sim.cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }
    server_app = make_server_app(scenario, run_dir, progress, resume)
    try:
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(scenario),
            num_supernodes=scenario.fleet.nodes,
            backend_name="ray",
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)

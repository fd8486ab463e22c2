"""The engine's process hygiene, without starting Ray."""

import subprocess
import time
from pathlib import Path

from fogsim.flower.engine import RAY_TMP_PREFIX, clean_stale_ray


def orphan(session: Path) -> subprocess.Popen:
    """A process writing into a Ray session's logs, as Ray's agents do."""
    (session / "logs").mkdir(parents=True)
    log = (session / "logs" / "agent.out").open("w")
    return subprocess.Popen(["sleep", "300"], stdout=log, stderr=log)


def test_what_a_killed_run_left_of_ray_is_stopped_and_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process: the driver of a killed run
    stale = tmp_path / f"{RAY_TMP_PREFIX}dead" / f"session_2026-11-25_10-00-00_123_{dead.pid}"
    live = tmp_path / f"{RAY_TMP_PREFIX}live" / f"session_2026-11-25_10-00-00_123_{1}"
    starting = tmp_path / f"{RAY_TMP_PREFIX}starting"  # no session yet: a run starting
    starting.mkdir()
    left, running = orphan(stale), orphan(live)
    try:
        assert clean_stale_ray(tmp_path) == [left.pid]
        assert left.wait(timeout=10) == -9
        assert not stale.parent.exists()
        time.sleep(0.2)
        assert running.poll() is None and live.exists() and starting.exists()
    finally:
        for p in (left, running):
            p.kill()
            p.wait()

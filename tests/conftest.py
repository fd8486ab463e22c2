"""Shared fixtures: scenario files written to a temp dir, Ray/Flower kept quiet, and one
torch thread in the test process."""

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# Clients train in process in many tests: one torch thread, as each client actor has
# (OpenMP threads spinning against a busy machine made one such test ~10x slower).
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

TINY = """
[run]
name = "tiny"
seed = 7
rounds = 2

[data]
dataset = "mnist"
partitioning = "dirichlet"
alpha = 1.0

[model]
arch = "mlp"
hidden = [64, 32]

[train]
lr = 0.1
momentum = 0.5
batch_size = 32

[fleet]
nodes = 10

[[fleet.classes]]
name = "big"
count = 4
memory = "8MiB"

[[fleet.classes]]
name = "small"
share = 1.0
memory = "512KiB"

[simulation]
clients_per_round = 4
evaluate_clients = 2
"""


@pytest.fixture
def tiny_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many cases the fuzz tests generated (tests/cli/test_fuzz.py), by outcome."""
    fuzz = sys.modules.get("tests.cli.test_fuzz")
    if fuzz is not None and fuzz.CASES:
        by_outcome = ", ".join(f"{n} {k}" for k, n in sorted(fuzz.CASES.items()))
        total = sum(fuzz.CASES.values())
        terminalreporter.write_line(f"fuzz: {total} generated cases ({by_outcome})")

"""The run directory: written round by round, loadable as plain tables.

Files (all plain text, CSV columns documented in the README):

- ``scenario.json``: the resolved scenario (every default filled in).
- ``inputs.json``: the fleet and trace files it names, with their contents' SHA-256
  (a resume or a sweep's reuse refuses a run whose files changed since).
- ``rounds.csv``: one row per finished round, appended and flushed as it ends.
- ``nodes.csv``: one row per node that trained in a round.
- ``fleet.csv``: node → device class and budget.
- ``devices.csv``: at the end, every device holding a model and its test accuracy
  (``fogsim.study.deployed``).
- ``model.pt``: the latest global ``state_dict`` (rewritten atomically each round).
- ``checkpoint.pt``: what a resumed run needs (see :class:`Checkpoint`), rewritten
  atomically after each round's rows are on disk.
- ``summary.json``: written when the run ends.

A crash, Ctrl-C or ``kill -9`` therefore loses at most the round in progress, and
``fogsim run --resume`` continues from the checkpoint: rows of a round that ended
after the last checkpoint are cut from the CSVs first, so none is lost or doubled.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fogsim.fleet import Fleet
from fogsim.scenario.files import input_files
from fogsim.scenario.schema import Scenario

CHECKPOINT = "checkpoint.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# What became of a sampled node's training in a round (``status`` in nodes.csv); only
# ``ok`` updates are averaged, and TRAINED ones ran on the device.
STATUSES = (
    "ok",
    "straggler",
    "dropped",
    "departed",
    "timed_out",
    "crashed",
    "rejected",
    "over_budget",
    "unfinished",  # buffered rounds: no merge took its update by the run's end
)
TRAINED = ("ok", "straggler")
# a node-round whose update was lost: not ``unfinished``, cut by the run's end
FAILED = tuple(s for s in STATUSES if s not in ("ok", "unfinished"))

NODE_COLUMNS = [
    "round",
    "node",
    "class",
    "budget_bytes",
    "status",
    "num_examples",
    "train_loss",
    "batch_size",
    "peak_memory",
    "needed_memory",
    "pruned",
    "params",
    "over_budget",
    "train_flops",
    "time_s",
    "bytes_down",
    "bytes_up",
    "sim_time_s",
    "departed_s",
    "battery",
    "energy_j",
    "energy_compute_j",
    "energy_radio_j",
    "energy_idle_j",
    "fog",  # a fog tier's: the fog aggregator that served the node, and which of
    "fog_round",  # the cloud round's fog rounds this was (blank on a flat topology)
    "staleness",  # buffered rounds: model versions between the node's start and its merge
    "sim_start_s",  # buffered rounds: the node's start on the simulated clock, and
    "sim_end_s",  # its reply's arrival there (or its leaving: a departed device)
    "error",  # a crashed client's exception, in its words (a column older runs lack)
]


# a node's figures in fleet.csv (its class's: catalogue or scenario)
FIGURES = (
    "flops",
    "up_mbps",
    "down_mbps",
    "latency_ms",
    "active_w",
    "idle_w",
    "tx_j_per_byte",
    "rx_j_per_byte",
    "connect_j",
)

DEVICE_COLUMNS = ["node", "class", "budget_bytes", "last_round", "params", "accuracy", "loss"]
DEVICE_COLUMNS += ["validation_accuracy"]  # the fleet's validation samples (study.deployed)


@dataclass
class Checkpoint:
    """The state after a finished round. Randomness needs no saved generator state:
    sampling, faults and each client's batches are seeded by (seed, round, node), and
    the initial model by the seed alone."""

    round: int
    arrays: dict[str, torch.Tensor]  # the global model
    strategy: dict[str, Any]  # per-node client state (masks, DynHP scores, ...)
    accuracy: float
    best_accuracy: float
    elapsed_s: float  # wall seconds spent on finished rounds
    # the latest rounds in a row in which no update counted (``max_failed_rounds``): a
    # resume once restarted the count, and a run that had failed resumed to "finished"
    failed: list[int] = field(default_factory=list)


class RunFailed(RuntimeError):
    """The run stopped because its rounds kept failing (no client update counted for
    ``[simulation] max_failed_rounds`` rounds in a row); finished rounds are on disk."""


class CsvLog:
    """Append-only CSV whose header is fixed by ``columns`` or the first row written."""

    def __init__(self, path: Path, columns: list[str] | None = None) -> None:
        self.path, self.columns = path, columns

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        new = not self.path.exists()
        if self.columns is None:
            self.columns = list(rows[0])
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (finished after the checkpoint), and a
        last line a kill tore (a torn ``10,2,...`` once stayed as round ``1``)."""
        if not self.path.exists():
            return
        reader = csv.DictReader(io.StringIO(whole_lines(self.path)))
        columns = reader.fieldnames or []
        rows = [r for r in reader if (r["round"] or "").isdigit() and int(r["round"]) <= last_round]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)
        self.columns = columns


class RunWriter:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rounds = CsvLog(run_dir / "rounds.csv")
        self.nodes = CsvLog(run_dir / "nodes.csv", NODE_COLUMNS)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write(self.dir / name, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))

    def fleet_table(self, fleet: Fleet) -> None:
        """fleet.csv: each node's class, its own budget, its figures (device, radio,
        speed, links, power) and, for a fleet from a file, its id, fog node, region
        and data share."""
        rows = []
        for node in range(fleet.num_nodes):
            d = fleet.device(node)
            figures = {f: "" if getattr(d, f) is None else getattr(d, f) for f in FIGURES}
            rows.append(
                {
                    "node": node,
                    "id": fleet.ids[node],
                    "class": d.name,
                    "budget_bytes": fleet.budget(node),
                    "device": d.device or "",
                    "radio": d.radio or "",
                    **figures,
                    **(fleet.file_rows[node] if fleet.file_rows else {}),
                }
            )
        (self.dir / "fleet.csv").unlink(missing_ok=True)
        CsvLog(self.dir / "fleet.csv").append(rows)

    def write_devices(self, rows: list[dict[str, Any]]) -> None:
        """devices.csv: every device holding a model and that model's test accuracy (and
        its validation accuracy, blank where the run has no validation samples)."""
        (self.dir / "devices.csv").unlink(missing_ok=True)
        CsvLog(self.dir / "devices.csv", DEVICE_COLUMNS).append(rows)

    def write_model(self, state: dict[str, torch.Tensor]) -> None:
        atomic_write(self.dir / "model.pt", lambda p: torch.save(state, p))

    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        atomic_write(self.dir / CHECKPOINT, lambda p: torch.save(asdict(ckpt), p))

    def read_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, after cutting CSV rows written past it; None if the run
        never finished a round (its partial files are removed)."""
        path = self.dir / CHECKPOINT
        if not path.exists():
            for log in (self.rounds, self.nodes):
                log.path.unlink(missing_ok=True)
            return None
        ckpt = Checkpoint(**torch.load(path, weights_only=False))  # our own file
        for log in (self.rounds, self.nodes):
            log.truncate(ckpt.round)
        return ckpt


def whole_lines(path: Path) -> str:
    """The text of ``path`` up to its last newline: rows are appended whole and fsynced,
    so a last line without one is a row a kill tore. Read as ``csv`` reads (no newline
    translation), so a quoted field's line breaks stay as written."""
    with path.open(newline="") as f:
        text = f.read()
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a fogsim CSV with numbers parsed back to int/float (a torn last line
    left out: :func:`whole_lines`)."""

    def parse(v: str | None) -> Any:
        for kind in (int, float):
            try:
                return kind(v)
            except (TypeError, ValueError):
                pass
        return "" if v is None else v

    rows = csv.DictReader(io.StringIO(whole_lines(path)))
    return [{k: parse(v) for k, v in row.items()} for row in rows]


# Fields that may differ when a run is resumed or reused: they do not change its results.
RESUME_MAY_DIFFER = {"run.output_dir", "run.name", "simulation.ray_address"}


def scenario_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between two scenario dumps."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += scenario_changes(a, b, f"{name}.")
        elif a != b and name not in RESUME_MAY_DIFFER:
            changed.append(f"{name} ({a!r} → {b!r})")
    return changed


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run (finished or not)."""
    return any((run_dir / f).exists() for f in ("rounds.csv", CHECKPOINT))


def stored_scenario_changes(run_dir: Path, scenario: Scenario) -> list[str]:
    """How ``scenario`` differs from the one the run in ``run_dir`` was made with (its
    scenario.json), and which of the files it names have other contents now than when
    the run started (its inputs.json); empty if they agree or the run stored none."""
    stored = run_dir / "scenario.json"
    if not stored.exists():
        return []
    changed = scenario_changes(json.loads(stored.read_text()), scenario.model_dump(mode="json"))
    inputs = run_dir / "inputs.json"
    now = input_files(scenario)
    for name, was in (json.loads(inputs.read_text()) if inputs.exists() else {}).items():
        if name in now and now[name]["path"] == was["path"] and now[name] != was:
            changed.append(f"{name} {was['path']} (its contents changed since the run started)")
    return changed


def finished_rounds(run_dir: Path) -> int:
    """Rounds whose rows are in ``run_dir``'s rounds.csv (0 if there is none)."""
    path = run_dir / "rounds.csv"
    return len(read_csv(path)) if path.exists() else 0


def strategy_name(run: dict[str, Any]) -> str | None:
    """The strategy a loaded run used (its summary, else its scenario)."""
    summary = run.get("summary", {})
    return summary.get("strategy") or run.get("scenario", {}).get("strategy", {}).get("name")


def load(run_dir: str | Path) -> dict[str, Any]:
    """A run's tables as lists of dicts (``pandas.DataFrame(tables["rounds"])`` works)."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {}
    for name in ("rounds", "nodes", "fleet", "devices"):
        if (run_dir / f"{name}.csv").exists():
            out[name] = read_csv(run_dir / f"{name}.csv")
    for name in ("scenario", "summary"):
        if (run_dir / f"{name}.json").exists():
            out[name] = json.loads((run_dir / f"{name}.json").read_text())
    return out

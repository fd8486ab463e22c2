"""The Flower ``ServerApp``: the round loop, centralized evaluation and results.

The loop mirrors Flower's ``Strategy.start`` (configure → send_and_receive →
aggregate, for training then client-side evaluation) but is fogsim's own so that each
round is written to disk as it ends (rows, model, then the checkpoint), progress is
reported, and a killed run resumes from its last finished round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from fogsim.data import load_dataset
from fogsim.fleet import Fleet, build_fleet
from fogsim.models import FogNet, model_from_state
from fogsim.results import STATUSES, TRAINED, Checkpoint, RunWriter
from fogsim.scenario import Scenario
from fogsim.strategies import STRATEGIES
from fogsim.training import evaluate

ProgressFn = Callable[[dict[str, Any]], None]


def initial_model(scenario: Scenario) -> FogNet:
    torch.manual_seed(scenario.run.seed)
    return FogNet(scenario.model.conv_channels, scenario.model.hidden)


def exchange(grid: Grid, messages: Iterable[Message], wave: int, timeout: float) -> list[Message]:
    """Send ``messages`` in waves of ``wave`` (one per registered Flower node) and
    collect the replies, all waves within ``timeout`` seconds.

    Flower's in-memory engine rescans every stored message for every registered node
    ten times a second, so a round handed over at once slows with the square of its
    size; waves bound that at the price of one wave's tail per wave."""
    messages, replies = list(messages), []
    end = time.monotonic() + timeout
    for start in range(0, len(messages), wave):
        left = max(0.0, end - time.monotonic())
        replies += grid.send_and_receive(messages[start : start + wave], timeout=left)
    return replies


@dataclass
class Federation:
    """Everything one run's server needs, built from the scenario."""

    scenario: Scenario
    fleet: Fleet
    writer: RunWriter
    progress: ProgressFn | None = None
    resume: bool = False  # continue from the run directory's checkpoint, if any
    stop: threading.Event = field(default_factory=threading.Event)  # set: end after this round

    def run(self, grid: Grid) -> dict[str, Any] | None:
        """All rounds, then ``summary.json``; None if :attr:`stop` ended it early."""
        sc = self.scenario
        ds = load_dataset(sc.data.dataset, sc.data.path)
        test_x, test_y = ds.tensors(ds.test_x, ds.test_y)
        strategy = STRATEGIES[sc.strategy.name](sc, self.fleet, **sc.strategy.params)
        model = initial_model(sc)
        ckpt = self.writer.read_checkpoint() if self.resume else None
        if ckpt is not None:
            model.load_state_dict(ckpt.arrays)
            strategy.load_state_dict(ckpt.strategy)
        first = ckpt.round + 1 if ckpt else 1
        best = ckpt.best_accuracy if ckpt else 0.0
        elapsed = ckpt.elapsed_s if ckpt else 0.0
        arrays = ArrayRecord(model.state_dict())
        timeout, wave = sc.simulation.round_timeout_s, sc.simulation.flower_nodes
        if self.progress and ckpt:
            self.progress({"round": ckpt.round, "rounds": sc.run.rounds, "resumed": True})
        row: dict[str, Any] = {}
        for rnd in range(first, sc.run.rounds + 1):
            if self.stop.is_set():
                return None
            t0 = time.perf_counter()
            replies = exchange(
                grid, strategy.configure_train(rnd, arrays, ConfigRecord(), grid), wave, timeout
            )
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            eval_replies = exchange(
                grid, strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid), wave, timeout
            )
            client_eval = strategy.aggregate_evaluate(rnd, eval_replies) or {}
            model.load_state_dict(arrays.to_torch_state_dict())
            acc, loss = evaluate(model, test_x, test_y)
            best = max(best, acc)
            stats = strategy.round_stats
            rows = strategy.node_rows
            trained = [r for r in rows if r["status"] in TRAINED]
            n = sum(r["num_examples"] for r in trained)
            failed_by = stats["failed_by_class"]
            row = {
                "round": rnd,
                "accuracy": acc,
                "loss": loss,
                "client_accuracy": client_eval.get("accuracy", ""),
                "client_loss": client_eval.get("loss", ""),
                "train_loss": sum(r["train_loss"] * r["num_examples"] for r in trained) / n
                if n
                else "",
                "sampled": stats["sampled"],
                "aggregated": stats["aggregated"],
                "kept_previous": int(new_arrays is None),
                **{s: stats[s] for s in STATUSES if s != "ok"},
                "failed": stats["sampled"] - stats["aggregated"],
                **{f"failed_{c.name}": failed_by[c.name] for c in self.fleet.classes},
                "bytes_up": stats["bytes_up"],
                "bytes_down": stats.get("bytes_down_train", 0),
                "sim_time_s": stats["sim_time_s"],
                "mean_params": sum(r["params"] for r in trained) / len(trained) if trained else "",
                "union_params": stats.get("union_params", ""),
                "over_budget": sum(int(r.get("over_budget") or 0) for r in rows),
                **self.deployable_accuracy(strategy, model, rnd, test_x, test_y, acc),
                "wall_s": time.perf_counter() - t0,
            }
            self.writer.rounds.append([row])
            self.writer.nodes.append(rows)
            self.writer.write_model(model.state_dict())
            elapsed += row["wall_s"]
            self.writer.write_checkpoint(
                Checkpoint(
                    round=rnd,
                    arrays=model.state_dict(),
                    strategy=strategy.state_dict(),
                    accuracy=acc,
                    best_accuracy=best,
                    elapsed_s=elapsed,
                )
            )
            if self.progress:
                self.progress({**row, "rounds": sc.run.rounds})
        summary = {
            "name": sc.run.name,
            "strategy": sc.strategy.name,
            "rounds": sc.run.rounds,
            "final_accuracy": row.get("accuracy", ckpt.accuracy if ckpt else None),
            "best_accuracy": best,
            "wall_s": elapsed,
        }
        self.writer.write_json("summary.json", summary)
        return summary

    def deployable_accuracy(self, strategy, model, rnd, test_x, test_y, acc) -> dict[str, Any]:  # noqa: ANN001
        """Test accuracy of the model each device class can train (its smallest budget);
        blank where the strategy gives that class nothing that fits, ``acc`` (the global
        model's, already measured) where it is the whole global model."""
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        out = {}
        for c, cls in enumerate(self.fleet.classes):
            budgets = self.fleet.budgets[self.fleet.node_class == c]
            if len(budgets) == 0:
                continue
            sub = strategy.deployable(state, int(budgets.min()), rnd)
            if sub is None:
                out[f"acc_{cls.name}"] = ""
            elif sub is state:
                out[f"acc_{cls.name}"] = acc
            else:
                out[f"acc_{cls.name}"] = evaluate(model_from_state(sub), test_x, test_y)[0]
        return out


def make_server_app(
    scenario: Scenario,
    run_dir: Path,
    progress: ProgressFn | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
) -> ServerApp:
    fleet = build_fleet(scenario.fleet, scenario.run.seed)
    writer = RunWriter(run_dir)
    writer.write_json("scenario.json", scenario.model_dump(mode="json"))
    writer.fleet_table(fleet)
    federation = Federation(scenario, fleet, writer, progress, resume, stop or threading.Event())
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        federation.run(grid)

    return app

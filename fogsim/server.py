"""The Flower ``ServerApp``: the round loop, centralized evaluation and results.

The loop mirrors Flower's ``Strategy.start`` (configure → send_and_receive →
aggregate, for training then client-side evaluation) but is fogsim's own so that each
round is written to disk as it ends and progress is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from fogsim.data import load_dataset
from fogsim.fleet import Fleet, build_fleet
from fogsim.models import FogNet, model_from_state
from fogsim.results import RunWriter
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

    def run(self, grid: Grid) -> dict[str, Any]:
        sc = self.scenario
        ds = load_dataset(sc.data.dataset, sc.data.path)
        test_x, test_y = ds.tensors(ds.test_x, ds.test_y)
        strategy = STRATEGIES[sc.strategy.name](sc, self.fleet, **sc.strategy.params)
        model = initial_model(sc)
        arrays = ArrayRecord(model.state_dict())
        timeout, wave = sc.simulation.round_timeout_s, sc.simulation.flower_nodes
        started = time.perf_counter()
        row: dict[str, Any] = {}
        best = 0.0
        for rnd in range(1, sc.run.rounds + 1):
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
            n = sum(r["num_examples"] for r in rows)
            row = {
                "round": rnd,
                "accuracy": acc,
                "loss": loss,
                "client_accuracy": client_eval.get("accuracy", ""),
                "client_loss": client_eval.get("loss", ""),
                "train_loss": sum(r["train_loss"] * r["num_examples"] for r in rows) / n
                if n
                else "",
                "sampled": stats["sampled"],
                "returned": stats["returned"],
                "failed": stats["failed"],
                "dropped": stats["dropped"],
                "bytes_up": stats["bytes_up"],
                "bytes_down": stats.get("bytes_down_train", 0),
                "sim_time_s": stats["sim_time_s"],
                "mean_params": sum(r["params"] for r in rows) / len(rows) if rows else "",
                "union_params": stats.get("union_params", ""),
                "over_budget": sum(r["over_budget"] for r in rows),
                **self.deployable_accuracy(strategy, model, rnd, test_x, test_y, acc),
                "wall_s": time.perf_counter() - t0,
            }
            self.writer.rounds.append([row])
            self.writer.nodes.append(rows)
            self.writer.write_model(model.state_dict())
            if self.progress:
                self.progress({**row, "rounds": sc.run.rounds})
        summary = {
            "name": sc.run.name,
            "strategy": sc.strategy.name,
            "rounds": sc.run.rounds,
            "final_accuracy": row.get("accuracy"),
            "best_accuracy": best,
            "wall_s": time.perf_counter() - started,
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
    scenario: Scenario, run_dir: Path, progress: ProgressFn | None = None
) -> ServerApp:
    fleet = build_fleet(scenario.fleet, scenario.run.seed)
    writer = RunWriter(run_dir)
    writer.write_json("scenario.json", scenario.model_dump(mode="json"))
    writer.fleet_table(fleet)
    federation = Federation(scenario, fleet, writer, progress)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        federation.run(grid)

    return app

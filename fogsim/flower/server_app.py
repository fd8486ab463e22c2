"""The Flower ``ServerApp``: the round loop, centralized evaluation and results.

The loop mirrors Flower's ``Strategy.start`` (configure → send_and_receive →
aggregate, for training then client-side evaluation) but is fogsim's own so that each
round is written to disk as it ends (rows, model, then the checkpoint), progress is
reported, and a killed run resumes from its last finished round.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch import nn

from fogsim.data import read_dataset
from fogsim.device.factory import FactoryArch
from fogsim.device.models import FogNet
from fogsim.device.training import evaluate
from fogsim.fleet import Fleet, build_fleet
from fogsim.scenario import Scenario
from fogsim.scenario.files import input_files
from fogsim.strategies import FogStrategy
from fogsim.study.deployed import (
    class_summary,
    device_rows,
    round_class_accuracy,
    validation_set,
)
from fogsim.study.results import STATUSES, TRAINED, Checkpoint, RunFailed, RunWriter
from fogsim.topology import round_driver, tier_columns

ProgressFn = Callable[[dict[str, Any]], None]
PULL_INTERVAL_S = 0.02  # how often replies are looked for (Flower's own loop: 0.1 s)


def initial_model(scenario: Scenario) -> nn.Module:
    """The dense global model before round 1, seeded: a FogNet, or the factory's."""
    torch.manual_seed(scenario.run.seed)
    arch = scenario.arch
    if isinstance(arch, FactoryArch):
        return arch.build(scenario.run.seed)
    return FogNet(arch.channels, arch.hidden, arch.in_shape, arch.num_classes)


def arrivals(
    grid: Grid, messages: Iterable[Message], in_flight: int, timeout: float
) -> Iterator[list[Message]]:
    """Send ``messages`` and yield their replies as they arrive, keeping at most
    ``in_flight`` at Flower (one per registered Flower node): each reply frees its
    mailbox, and the next message goes to it at once. Stops when every message has a
    reply or ``timeout`` seconds have passed.

    Flower's in-memory engine rescans every stored message for every registered node
    ten times a second, so a round handed over at once slows with the square of its
    size; a sliding window bounds that without waiting for the slowest message of a
    wave, and the caller can take in each reply (and drop it) as it comes."""
    pending, end = deque(messages), time.monotonic() + timeout
    first = [pending.popleft() for _ in range(min(in_flight, len(pending)))]
    waiting = set(grid.push_messages(first))
    while waiting and time.monotonic() < end:
        replies = list(grid.pull_messages(waiting))
        if not replies:
            time.sleep(PULL_INTERVAL_S)
            continue
        waiting -= {m.metadata.reply_to_message_id for m in replies}
        refill = []
        for reply in replies[: len(pending)]:
            msg = pending.popleft()
            msg.metadata.dst_node_id = reply.metadata.src_node_id  # the mailbox just freed
            refill.append(msg)
        waiting |= set(grid.push_messages(refill))
        yield replies


def exchange(
    grid: Grid, messages: Iterable[Message], in_flight: int, timeout: float
) -> list[Message]:
    """Every reply to ``messages`` that arrives within ``timeout`` (:func:`arrivals`)."""
    return [m for replies in arrivals(grid, messages, in_flight, timeout) for m in replies]


def round_row(
    strategy: FogStrategy, fleet: Fleet, kept_previous: bool, client_eval: MetricRecord
) -> dict[str, Any]:
    """The rounds.csv fields a strategy's bookkeeping gives for the round just ended
    (accuracy and timing are added by the loop)."""
    stats, rows = strategy.round_stats, strategy.node_rows
    trained = [r for r in rows if r["status"] in TRAINED]
    n = sum(r["num_examples"] for r in trained)
    failed_by = stats["failed_by_class"]
    return {
        "client_accuracy": client_eval.get("accuracy", ""),
        "client_loss": client_eval.get("loss", ""),
        "train_loss": sum(r["train_loss"] * r["num_examples"] for r in trained) / n if n else "",
        "sampled": stats["sampled"],
        "aggregated": stats["aggregated"],
        "kept_previous": int(kept_previous),
        **{s: stats[s] for s in STATUSES if s != "ok"},
        "failed": stats["sampled"] - stats["aggregated"],
        **{f"failed_{c.name}": failed_by[c.name] for c in fleet.classes},
        **{f"up_{name}": n for name, n in stats["up_by_class"].items()},
        "bytes_up": stats["bytes_up"],
        "bytes_down": stats.get("bytes_down_train", 0),
        "sim_clock_s": stats["sim_clock_s"],
        "sim_time_s": stats["sim_time_s"],
        "mean_params": sum(r["params"] for r in trained) / len(trained) if trained else "",
        "union_params": stats.get("union_params", ""),
        "over_budget": sum(int(r.get("over_budget") or 0) for r in rows),
        **strategy.energy_columns(),
        **tier_columns(stats),
    }


@dataclass
class RoundLoop:
    """One run's rounds on the server, built from the scenario: train, aggregate,
    evaluate, write; resumable from the run directory's checkpoint."""

    scenario: Scenario
    fleet: Fleet
    writer: RunWriter
    progress: ProgressFn | None = None
    resume: bool = False  # continue from the run directory's checkpoint, if any
    stop: threading.Event = field(default_factory=threading.Event)  # set: end after this round
    failed: list[int] = field(default_factory=list, init=False)  # the latest rounds in a
    # row with no update counted
    stopped: bool = field(default=False, init=False)  # the round just trained ends the run

    def run(self, grid: Grid) -> dict[str, Any] | None:
        """All rounds, then ``summary.json``; None if :attr:`stop` ended it early."""
        sc = self.scenario
        ds = read_dataset(sc.data.dataset, sc.data.path)
        self.test = ds.tensors(ds.test_x, ds.test_y)
        del ds  # the training images (MNIST's 47 MB): the driver keeps only the test split
        self.strategy = round_driver(sc, self.fleet)  # a fog tier's, if any
        self.model = initial_model(sc)
        ckpt = self.writer.read_checkpoint() if self.resume else None
        if ckpt is not None:
            self.model.load_state_dict(ckpt.arrays)
            self.strategy.load_state_dict(ckpt.strategy)
            if self.progress:
                self.progress({"round": ckpt.round, "rounds": sc.run.rounds, "resumed": True})
        self.best = ckpt.best_accuracy if ckpt else 0.0
        self.elapsed = ckpt.elapsed_s if ckpt else 0.0
        arrays = ArrayRecord(self.model.state_dict())
        final = ckpt.accuracy if ckpt else None
        self.failed = ckpt.failed if ckpt else []
        self.stop_if_failing(resumed=True)  # a run that had failed stays failed
        first = (ckpt.round + 1) if ckpt else 1
        for rnd in range(first, sc.run.rounds + 1):
            # a stop asked before this round ends the run now; a buffered driver's devices
            # in flight since an earlier round are booked by the round it ends instead
            if self.stop.is_set() and (rnd == first or not self.keeps_devices_in_flight):
                return None
            arrays, row = self.round(grid, rnd, arrays)
            if self.stop.is_set() and row["crashed"]:
                # a stop signalled to the whole process group also ends Ray's workers:
                # their nodes "crashed" with this round. Not saved: a resume redoes it
                return None
            self.save(row)
            final = row["accuracy"]
            self.stop_if_failing()  # a failed run says so, stopped or not
            if self.stopped and rnd < sc.run.rounds:
                return None
        summary = {
            "name": sc.run.name,
            "strategy": sc.strategy.label,
            "rounds": sc.run.rounds,
            "final_accuracy": final,
            "best_accuracy": self.best,
            "wall_s": self.elapsed,
            **self.finish(),
        }
        self.writer.write_json("summary.json", summary)
        return summary

    def round(self, grid: Grid, rnd: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict]:
        """One round: train and aggregate, evaluate on clients and on the test split;
        returns the new global model and the round's rounds.csv row."""
        t0, strategy, sim = time.perf_counter(), self.strategy, self.scenario.simulation
        in_flight, timeout = sim.flower_nodes, sim.round_timeout_s
        if hasattr(strategy, "train_round"):  # a fog tier or buffered rounds: own exchanges
            send = lambda m: exchange(grid, m, in_flight, timeout)  # noqa: E731
            new_arrays = strategy.train_round(grid, rnd, arrays, send)
        else:
            messages = strategy.configure_train(rnd, arrays, ConfigRecord(), grid)
            strategy.open_replies()
            for replies in arrivals(grid, messages, in_flight, timeout):
                strategy.take(rnd, replies)
            new_arrays, _ = strategy.close_replies(rnd)
        if new_arrays is not None:
            arrays = new_arrays
        messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid)
        client_eval = strategy.aggregate_evaluate(rnd, exchange(grid, messages, in_flight, timeout))
        self.model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate(self.model, *self.test)
        self.best = max(self.best, acc)
        self.count_failure(rnd)
        self.end_if_last(rnd)
        row = {
            "round": rnd,
            "accuracy": acc,
            "loss": loss,
            **round_row(strategy, self.fleet, new_arrays is None, client_eval or MetricRecord()),
            **self.class_accuracy(rnd),
            "wall_s": time.perf_counter() - t0,
        }
        return arrays, row

    @property
    def keeps_devices_in_flight(self) -> bool:
        """Whether the round driver keeps devices in flight across rounds (buffered ones),
        to be booked by :meth:`end_if_last` in whichever round ends the run."""
        return hasattr(self.strategy, "end_run")

    def count_failure(self, rnd: int) -> None:
        """Extend :attr:`failed`, the latest rounds in a row with no update counted, by
        round ``rnd`` if it sampled devices and counted none, or clear it."""
        stats = self.strategy.round_stats
        self.failed = [*self.failed, rnd] if stats["sampled"] and not stats["aggregated"] else []

    def end_if_last(self, rnd: int) -> None:
        """Decide, once, whether the run ends with round ``rnd`` (just trained): its last
        round, a stop asked for by now (:attr:`stopped`; one asked later ends the next
        round), or the ``max_failed_rounds``-th in a row with no update
        (:attr:`failed`). If so, a round driver that keeps devices in flight books them
        in this round, so every device sent the model has a row, however the run ends."""
        self.stopped = self.stop.is_set()
        last = rnd == self.scenario.run.rounds or self.stopped or self.failing()
        if last and self.keeps_devices_in_flight:
            self.strategy.end_run(rnd)

    def failing(self) -> bool:
        """Whether ``[simulation] max_failed_rounds`` rounds in a row counted no update."""
        limit = self.scenario.simulation.max_failed_rounds
        return bool(limit) and len(self.failed) >= limit

    def stop_if_failing(self, resumed: bool = False) -> None:
        """Raise :class:`RunFailed` once ``[simulation] max_failed_rounds`` rounds in a row
        counted no client update: a run whose model stopped learning must not end with
        a final accuracy as if it had trained (nor when resumed: ``resumed``)."""
        if not self.failing():
            return
        limit, failed = self.scenario.simulation.max_failed_rounds, self.failed
        problems = self.strategy.round_stats.get("problems", [])
        shown = "; ".join(problems[:3]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 3 else ""
        )
        if resumed:
            shown = "the run had stopped there; each client's status is in nodes.csv"
        raise RunFailed(
            f"rounds {failed[0]}-{failed[-1]}: no client update counted in {len(failed)} rounds "
            f"in a row ([simulation] max_failed_rounds = {limit}); in round {failed[-1]}: "
            f"{shown or 'no client replied'}. The finished rounds are in {self.writer.dir}."
        )

    def save(self, row: dict[str, Any]) -> None:
        """Rows first (fsynced), then the model, then the checkpoint (with :attr:`failed`,
        the latest rounds in a row with no update): a kill at any moment loses at most
        the round in progress (see ``fogsim.study.results``)."""
        self.writer.rounds.append([row])
        self.writer.nodes.append(self.strategy.node_rows)
        self.writer.write_model(self.model.state_dict())
        self.elapsed += row["wall_s"]
        self.writer.write_checkpoint(
            Checkpoint(
                round=row["round"],
                arrays=self.model.state_dict(),
                strategy=self.strategy.state_dict(),
                accuracy=row["accuracy"],
                best_accuracy=self.best,
                elapsed_s=self.elapsed,
                failed=self.failed,
            )
        )
        if self.progress:
            self.progress({**row, "rounds": self.scenario.run.rounds})

    def global_state(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.model.state_dict().items()}

    def class_accuracy(self, rnd: int) -> dict[str, Any]:
        """Per class, the accuracy of the models its devices hold (a sample of them, on
        a test subset: ``fogsim.study.deployed``)."""
        sim = self.scenario.simulation
        if sim.device_eval_nodes == 0:
            return {}
        rng = np.random.default_rng([self.scenario.run.seed, rnd, 2])
        x, y = self.test
        if sim.device_eval_samples is not None and sim.device_eval_samples < len(x):
            pick = np.random.default_rng([self.scenario.run.seed, 0xE7A1]).permutation(len(x))
            index = torch.from_numpy(np.sort(pick[: sim.device_eval_samples]))
            x, y = x[index], y[index]
        return round_class_accuracy(
            self.strategy, self.fleet, self.global_state(), x, y, sim.device_eval_nodes, rng
        )

    def finish(self) -> dict[str, Any]:
        """devices.csv (every device's own model on the whole test split and on the
        fleet's validation samples) and summary.json's part of it: the per-class
        summary, and how many validation samples there were (``draws`` over a big fleet
        leave few: 3 for 10,000 nodes of 60 MNIST images, an independent check found)."""
        sc = self.scenario
        validation = validation_set(sc, read_dataset(sc.data.dataset, sc.data.path))
        rows = device_rows(self.strategy, self.fleet, self.global_state(), *self.test, validation)
        self.writer.write_devices(rows)
        samples = 0 if validation is None else len(validation[1])
        return {"validation_samples": samples, "classes": class_summary(rows, self.fleet)}


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
    writer.write_json("inputs.json", input_files(scenario))
    writer.fleet_table(fleet)
    loop = RoundLoop(scenario, fleet, writer, progress, resume, stop or threading.Event())
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop.run(grid)

    return app

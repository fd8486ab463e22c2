"""Server round logic driven in this process: Flower's ``Grid`` interface served by
the real ClientApp logic (``clients.fog_client.reply_train`` / ``reply_evaluate``) on the
real Flower messages, one after the other, as Flower's engine would run them on Ray.
Fast enough to compare whole runs in a unit test; the Ray runs are in ``test_runs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import torch
from flwr.app import Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from clients.fog_client import reply_evaluate, reply_train
from fogsim.fleet import build_fleet
from fogsim.flower import cohort
from fogsim.flower.server_app import RoundLoop
from fogsim.scenario import Scenario
from fogsim.study.results import RunWriter, read_csv

SCENARIO = """
[run]
name = "fog"
seed = 5
rounds = 3

[data]
partitioning = "draws"
samples_per_node = 120

[model]
hidden = [16, 8]

[train]
lr = 0.1

[fleet]
nodes = 12

[[fleet.classes]]
name = "big"
count = 4
memory = "8MiB"
flops = 2e9

[[fleet.classes]]
name = "small"
share = 1.0
memory = "128KiB"
flops = 2e8
latency_ms = 20

[strategy]
name = "mask-union"

[simulation]
clients_per_round = 6
evaluate_clients = 2
device_eval_nodes = 2
device_eval_samples = 200
"""


class LocalGrid:
    """The part of ``flwr.serverapp.Grid`` the round loop uses: pushed messages are
    answered, one after the other, when their replies are pulled; in the order they
    were pushed, ``batch`` per pull (so replies trickle in as from Flower's engine)."""

    def __init__(self, nodes: int, batch: int = 2) -> None:
        self.nodes, self.batch = nodes, batch
        self.sent = 0  # fleet nodes sent (a message carries a cohort of them)
        self.train_messages = 0
        self.pushed: dict[str, Message] = {}  # not yet answered, in push order

    def get_node_ids(self) -> list[int]:
        return list(range(101, 101 + self.nodes))

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as pushing does
            self.sent += len(cohort.nodes_of(msg))
            self.train_messages += msg.metadata.message_type == MessageType.TRAIN
            self.pushed[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        wanted = [i for i in self.pushed if i in set(message_ids)][: self.batch]
        replies = []
        for msg in (self.pushed.pop(i) for i in wanted):
            kind = msg.metadata.message_type
            client = reply_train if kind == MessageType.TRAIN else reply_evaluate
            reply = client(msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies


def run_local(
    sc: Scenario, out: Path, grid: LocalGrid | None = None, **loop: Any
) -> tuple[list[dict], list[dict], LocalGrid]:
    """(rounds.csv, nodes.csv, the grid) of ``sc`` run in this process; ``loop``: more
    of :class:`RoundLoop`'s fields (a progress function, a stop event)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    torch.set_num_threads(1)  # as a client actor with one Ray CPU
    fleet = build_fleet(sc.fleet, sc.run.seed)
    grid = grid or LocalGrid(sc.simulation.flower_nodes)
    writer = RunWriter(out)
    writer.write_json("scenario.json", sc.model_dump(mode="json"))
    writer.fleet_table(fleet)
    RoundLoop(sc, fleet, writer, **loop).run(grid)
    return read_csv(out / "rounds.csv"), read_csv(out / "nodes.csv"), grid

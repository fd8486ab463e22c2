"""Server round logic driven in this process: Flower's ``Grid`` interface served by
the real ClientApp logic (``clients.fog_client.reply_train`` / ``reply_evaluate``) on the
real Flower messages, one after the other, as Flower's engine would run them on Ray.
Fast enough to compare whole runs in a unit test; the Ray runs are in ``test_runs``."""

from __future__ import annotations

from pathlib import Path
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
memory = "96KiB"
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
    """The part of ``flwr.serverapp.Grid`` the round loop uses."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.sent = 0  # fleet nodes sent (a message carries a cohort of them)

    def get_node_ids(self) -> list[int]:
        return list(range(101, 101 + self.nodes))

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as pushing does
            self.sent += len(cohort.nodes_of(msg))
            kind = msg.metadata.message_type
            client = reply_train if kind == MessageType.TRAIN else reply_evaluate
            replies.append(client(msg))
        return replies


def run_local(sc: Scenario, out: Path) -> tuple[list[dict], list[dict], LocalGrid]:
    """(rounds.csv, nodes.csv, the grid) of ``sc`` run in this process."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    torch.set_num_threads(1)  # as a client actor with one Ray CPU
    fleet = build_fleet(sc.fleet, sc.run.seed)
    grid = LocalGrid(sc.simulation.flower_nodes)
    writer = RunWriter(out)
    writer.write_json("scenario.json", sc.model_dump(mode="json"))
    writer.fleet_table(fleet)
    RoundLoop(sc, fleet, writer).run(grid)
    return read_csv(out / "rounds.csv"), read_csv(out / "nodes.csv"), grid
